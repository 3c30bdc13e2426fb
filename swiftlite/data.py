"""`--dataset` specs -> Conversations: what `mm sft` and `mm infer --val_dataset` read (the top of the data path).

`--dataset` takes local .json / .jsonl / .csv files (a `#N` suffix samples N rows, seeded), registered dataset
names (`coco-en-mini`, `refcoco:caption`: swiftlite/dataset_registry, resolved first) or hub dataset ids.
Files are read by swiftlite/dataset_readers.py, each row becomes a Conversation in swiftlite/dataset_formats.py
(conversations/ShareGPT, messages, query/response/history, alpaca, agent rows; the formats are listed there).
Data flows one way: readers and formats at the bottom, dataset_registry above them, this module on top.

A row that cannot be used raises a UserError naming `file:row` and the problem; with `strict=False` such rows
are skipped and counted instead. Only the stdlib is imported at module level (`datasets` only when a hub
dataset is named).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from swiftlite.conversation import Conversation
from swiftlite.dataset_formats import record_to_conversation
from swiftlite.dataset_readers import RowError, read_file, sampled_indices
from swiftlite.errors import UserError
from swiftlite.hub_env import hf_hub_reachable, hf_offline, use_hf_default
from swiftlite.media import MediaError

LOCAL_SUFFIXES = (".json", ".jsonl", ".csv")
_SAMPLE_SUFFIX_RE = re.compile(r"^(.*)#(\d+)$")


@dataclass
class DatasetRow:
    conversation: Conversation
    source: str  # "file.json:12" (1-based row number; line number for .jsonl, data row for .csv)


# ---- public API ----------------------------------------------------------------------------------------
def load_dataset_rows(specs: list[str], strict: bool = True, seed: int = 42,
                      require_response: bool = True, use_hf: bool | None = None,
                      on_skip=None) -> tuple[list[DatasetRow], int]:
    """Read every dataset spec ("file.jsonl", "file.json#100", "coco-en-mini#20", hub id) into rows.

    Returns (rows, skipped). Registered names (`mm list datasets`) are resolved before files and hub ids;
    `use_hf` picks their hub (default: USE_HF, else ModelScope). `require_response=False` accepts rows whose
    last turn is the user's (prompts for `mm infer`). Not strict, each skipped row's "file:row: problem" goes to
    `on_skip` when given.
    """
    if isinstance(specs, str):
        specs = [specs]
    rows: list[DatasetRow] = []
    skipped = 0
    for spec in specs:
        path_text, sample = parse_spec(spec)
        named = _read_named(path_text, sample, seed, use_hf)
        if named is not None:
            (records, base_dir), sample = named, None  # sampled already, by row index
        else:
            records, base_dir = read_records(path_text)
        file_rows: list[DatasetRow] = []
        for source, record in records:
            try:
                if isinstance(record, RowError):
                    raise record
                conversation = record_to_conversation(record, base_dir, require_response)
            except (RowError, MediaError) as error:
                if strict:
                    raise UserError(f"{source}: {error} (pass --strict false to skip bad rows)") from None
                if on_skip is not None:
                    on_skip(f"{source}: {error}")
                skipped += 1
                continue
            file_rows.append(DatasetRow(conversation, source))
        if not file_rows and not skipped:
            raise UserError(f"--dataset {spec}: the dataset holds no rows")
        rows += sample_rows(file_rows, sample, seed) if sample is not None else file_rows
    return rows, skipped


def split_train_val(rows: list, test_ratio: float, seed: int) -> tuple[list, list]:
    """Deterministic held-out split: ceil(ratio * n) rows (at least 1, leaving at least 1 to train on).

    Depends only on (rows, test_ratio, seed), so `mm infer --load_dataset_config true` finds the same rows.
    Both parts keep the dataset's order.
    """
    if not 0 <= test_ratio < 1:
        raise UserError(f"--dataset_test_ratio {test_ratio}: expected a number in [0, 1)")
    if test_ratio == 0 or len(rows) < 2:
        return list(rows), []
    val_count = min(len(rows) - 1, max(1, math.ceil(len(rows) * test_ratio)))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    val_indices = set(order[:val_count])
    train = [row for index, row in enumerate(rows) if index not in val_indices]
    val = [row for index, row in enumerate(rows) if index in val_indices]
    return train, val


def load_train_val(dataset: list[str], val_dataset: list[str] | None = None, dataset_test_ratio: float = 0.0,
                   seed: int = 42, strict: bool = True, use_hf: bool | None = None,
                   **_ignored) -> tuple[list[DatasetRow], list[DatasetRow], int]:
    """(train rows, validation rows, skipped count): `val_dataset` if given, else a held-out split of `dataset`.

    Extra keyword arguments are ignored so that callers can pass a whole sft_args.json.
    """
    if not dataset:
        raise UserError("--dataset: name at least one dataset file")
    rows, skipped = load_dataset_rows(dataset, strict, seed, use_hf=use_hf)
    if val_dataset:
        val_rows, val_skipped = load_dataset_rows(val_dataset, strict, seed, use_hf=use_hf)
        return rows, val_rows, skipped + val_skipped
    train, val = split_train_val(rows, dataset_test_ratio, seed)
    return train, val, skipped


# ---- named datasets (swiftlite/dataset_registry) ------------------------------------------------------
def _read_named(path_text: str, sample: int | None, seed: int, use_hf: bool | None):
    """(records, base_dir) of a registered dataset name, or None when `path_text` is not one."""
    from swiftlite.dataset_registry import find_named_dataset

    found = find_named_dataset(path_text)
    if found is None:
        return None
    from swiftlite.dataset_registry.sources import read_named

    if use_hf is None:
        use_hf = use_hf_default()
    entry, subset = found
    return read_named(entry, subset, sample, seed, use_hf)


# ---- specs and sampling ------------------------------------------------------------------------------
def parse_spec(spec: str) -> tuple[str, int | None]:
    """'train.json#100' -> ('train.json', 100); 'train.json' -> ('train.json', None)."""
    match = _SAMPLE_SUFFIX_RE.match(spec)
    if match and not Path(spec).exists():
        return match.group(1), int(match.group(2))
    return spec, None


def sample_rows(rows: list, count: int, seed: int) -> list:
    """N rows drawn without replacement (seeded); beyond the dataset's size, whole copies plus a sample."""
    return [rows[index] for index in sampled_indices(len(rows), count, seed)]


# ---- reading files and hub datasets ------------------------------------------------------------------
def read_records(path_text: str) -> tuple[list[tuple[str, object]], str | None]:
    """[(source, record dict or RowError)], and the directory relative media paths resolve against."""
    path = Path(path_text).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in LOCAL_SUFFIXES:
            return read_file(path, path_text), str(path.resolve().parent)
        raise UserError(f"--dataset {path_text}: unsupported file type {suffix!r} (expected .json, .jsonl or .csv)")
    looks_like_file = path.suffix.lower() in LOCAL_SUFFIXES or (path.suffix and "/" not in path_text)
    if looks_like_file or path_text.startswith((".", "/", "~")) or path_text.count("/") > 1:
        raise UserError(f"--dataset {path_text}: no such file")
    return _read_hub_dataset(path_text), None


def _read_hub_dataset(dataset_id: str) -> list:
    """A dataset id on the Hugging Face Hub (through `datasets`); offline this is a clear error."""
    name, _, subset = dataset_id.partition(":")
    if not hf_offline() and not hf_hub_reachable():
        # Without this check the hub client retries with back-off for half a minute before giving up.
        raise UserError(f"--dataset {dataset_id}: not a local file, and the Hugging Face Hub cannot be reached "
                        "(set HF_HUB_OFFLINE=1 to use a cached copy, or pass a local .json/.jsonl/.csv file)")
    try:
        import datasets
    except ImportError:
        raise UserError(f"--dataset {dataset_id}: not a local file, and the `datasets` package needed to load "
                        "hub datasets is not installed") from None
    try:
        loaded = datasets.load_dataset(name, subset or None, split="train")
    except Exception as error:  # network, unknown id, auth: all user-facing
        first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UserError(
            f"--dataset {dataset_id}: not a local file, and loading it from the hub failed ({first_line}). "
            "Check the name and your network, or pass a local .json/.jsonl/.csv file."
        ) from None
    return [(f"{dataset_id}:{index}", dict(record)) for index, record in enumerate(loaded, start=1)]
