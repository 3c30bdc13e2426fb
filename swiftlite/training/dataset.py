"""Dataset rows -> encoded training samples, lazily (in dataloader workers) or all up front (cached).

Encoding a row (loading and processing its images, tokenizing, expanding image tokens) is the costly part
of data preparation. With `--lazy_tokenize true` (the default, as in ms-swift for multimodal models) it runs
in `__getitem__`, i.e. in the dataloader workers (`--dataloader_num_workers`), overlapping with the training
step. With `--lazy_tokenize false` every row is encoded once before training and kept in memory.

`--max_length` counts tokens after image-token expansion. A longer row is dropped (`--truncation_strategy
delete`) or has its oldest tokens cut (`truncation_left`, only when no image token would be cut: a partial
image cannot be fed to the model, so such rows are dropped too). Lazily, a dropped row is replaced by the
next row that fits; every batch carries the sources it dropped, and the trainer counts them.
"""

from __future__ import annotations

import time

from swiftlite.errors import UserError
from swiftlite.templates.base import IGNORE_INDEX

STATS_KEY = "swiftlite_stats"  # per-batch bookkeeping the trainer pops before the forward pass


class RowDropped(Exception):
    """This row cannot be trained on (too long, or a bad row with --strict false)."""


class EncodedDataset:
    """A map-style dataset of encoded rows for the transformers Trainer."""

    def __init__(self, rows, template, max_length: int | None, truncation_strategy: str = "delete",
                 strict: bool = True, lazy: bool = True):
        if truncation_strategy not in ("delete", "truncation_left"):
            raise UserError(f"--truncation_strategy {truncation_strategy}: expected delete or truncation_left")
        self.rows = list(rows)
        self.template = template
        self.max_length = max_length if max_length and max_length > 0 else None
        self.truncation_strategy = truncation_strategy
        self.strict = strict
        self.lazy = lazy
        self.dropped: dict[str, str] = {}  # source -> reason (eager mode; lazy drops travel with batches)
        self.cache: list[dict] | None = None
        if not lazy:
            self.cache = []
            for row in self.rows:
                try:
                    self.cache.append(self.encode_row(row))
                except RowDropped as reason:
                    self.dropped[row.source] = str(reason)
            if self.rows and not self.cache:
                raise UserError(self._nothing_fits_message())

    def __len__(self) -> int:
        return len(self.cache) if self.cache is not None else len(self.rows)

    def __getitem__(self, index: int) -> dict:
        if self.cache is not None:
            return dict(self.cache[index], _dropped=[], _encode_s=0.0)
        started = time.perf_counter()
        dropped = []
        # A row that cannot be used is replaced by the next one, so that batches keep their size.
        for offset in range(len(self.rows)):
            row = self.rows[(index + offset) % len(self.rows)]
            try:
                encoded = self.encode_row(row)
            except RowDropped as reason:
                dropped.append((row.source, str(reason)))
                continue
            encoded["_dropped"] = dropped
            encoded["_encode_s"] = time.perf_counter() - started
            return encoded
        raise UserError(self._nothing_fits_message())

    def _nothing_fits_message(self) -> str:
        return (f"no dataset row fits --max_length {self.max_length} (or every row failed to encode); "
                "raise --max_length, lower --max_pixels or use --truncation_strategy truncation_left")

    def encode_row(self, row) -> dict:
        from swiftlite.media import MediaError
        from swiftlite.templates.base import TemplateError

        try:
            encoded = self.template.encode(row.conversation)
        except (TemplateError, MediaError, ValueError) as error:
            # ValueError: what an image processor raises for an image it cannot take (Qwen2-VL: an aspect ratio
            # over 200, e.g. 400x1); it is this row's problem, so it gets the row's file:row like the others.
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if self.strict:
                raise UserError(f"{row.source}: {message} (pass --strict false to skip bad rows)") from None
            raise RowDropped(f"cannot be encoded: {message}") from None
        if "labels" not in encoded or all(label == IGNORE_INDEX for label in encoded["labels"]):
            raise RowDropped("no assistant tokens to train on")
        length = len(encoded["input_ids"])
        if self.max_length is None or length <= self.max_length:
            return encoded
        if self.truncation_strategy == "delete":
            raise RowDropped(f"{length} tokens > --max_length {self.max_length}")
        return self._truncate_left(encoded, length)

    def _truncate_left(self, encoded: dict, length: int) -> dict:
        cut = length - self.max_length
        media_ids = {self.template.token_id(token) for token in (self.template.meta.image_token,
                                                                self.template.meta.audio_token) if token}
        if any(token in media_ids for token in encoded["input_ids"][:cut]):
            raise RowDropped(f"{length} tokens > --max_length {self.max_length}, and truncating would cut an image")
        video_token = getattr(self.template.processor, "video_token", None) if self.template.video_processor else None
        if video_token and self.template.token_id(video_token) in encoded["input_ids"][:cut]:
            raise RowDropped(f"{length} tokens > --max_length {self.max_length}, and truncating would cut a video")
        sequence_keys = {"input_ids", "attention_mask", "labels", *self.template.meta.sequence_keys}
        for key in sequence_keys & encoded.keys():
            encoded[key] = list(encoded[key])[cut:]
        if all(label == IGNORE_INDEX for label in encoded["labels"]):
            raise RowDropped(f"{length} tokens > --max_length {self.max_length}, and no reply is left after truncation")
        return encoded


class Collator:
    """Pads rows into a batch (the template's own collate) and attaches the batch's bookkeeping."""

    def __init__(self, template):
        self.template = template

    def __call__(self, rows: list[dict]) -> dict:
        started = time.perf_counter()
        dropped = [item for row in rows for item in row.pop("_dropped", [])]
        encode_seconds = sum(row.pop("_encode_s", 0.0) for row in rows)
        batch = self.template.collate(rows, padding_side="right")
        batch[STATS_KEY] = {
            "samples": len(rows),
            "tokens": int(batch["attention_mask"].sum()),
            "prepare_s": encode_seconds + time.perf_counter() - started,
            "dropped": dropped,
        }
        return batch
