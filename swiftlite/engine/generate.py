"""One call of transformers' `generate` over a left-padded batch, with per-row settings.

`generate` applies one GenerationConfig to the whole batch, but requests in a batch differ: one wants
greedy decoding, another temperature 0.7 with its own seed, another stops at "Observation:". So we run
`generate` greedily with no processors of its own and do the per-row work ourselves:

- `RowSampler` (a logits processor) applies each row's repetition penalty, temperature, top-k and top-p,
  draws the row's token from the row's own torch.Generator, and leaves only that token's logit finite, so
  the greedy step picks it. It also records log-probabilities when asked. logit_bias, presence/frequency
  penalties and grammar masks (structured outputs, forced tool calls) are per row too: engine/logits.py.
- `RowTracker` (a streamer) receives each step's tokens, decodes each row incrementally, cuts at stop
  token ids and stop strings, enforces each row's max_new_tokens, honours cancellation (a client that
  went away), and reports text deltas as they appear.
- `RowStopper` (a stopping criterion) tells `generate` which rows are finished; it ends when all are.

With `isolate_rows` (the server's engine), a failure in one row's own work (its generator's seed, a sampling
distribution that came out inf/NaN, its decoding) ends that row with finish_reason "error" and the reason in
`RowResult.error`; the other rows of the batch go on. Only a failure of the model's forward pass, which all rows
share, fails the whole batch. Without it (mm infer, the Python API), such a failure raises once the batch ends.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class SamplingParams:
    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    do_sample: bool | None = None  # None: sample when temperature > 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    # OpenAI's logit shaping (engine/logits.py): token id -> bias added to its logit; penalties over generated tokens.
    logit_bias: dict[int, float] = field(default_factory=dict)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # An llguidance grammar (engine/logits.py: json_schema_grammar, lark_grammar) the row's output must match.
    grammar: str | None = None
    # The prompt's own logprobs with this many alternatives (completions' echo with logprobs); None: not wanted.
    prompt_logprobs: int | None = None

    @property
    def sampling(self) -> bool:
        if self.temperature is not None and self.temperature <= 0:
            return False  # temperature 0 means greedy, as in the OpenAI API and ms-swift
        return bool(self.do_sample) if self.do_sample is not None else True

    @classmethod
    def from_generation_config(cls, generation_config, **overrides) -> "SamplingParams":
        """Defaults from the checkpoint's generation_config.json, then the user's flags (None = keep)."""
        params = cls()
        if generation_config is not None:
            for name in ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "do_sample"):
                value = getattr(generation_config, name, None)
                if value is not None:
                    setattr(params, name, value)
            if not getattr(generation_config, "do_sample", None):
                # transformers decodes greedily unless the config says do_sample (LLaVA's says nothing).
                params.temperature = 0.0
        for name, value in overrides.items():
            if value is not None:
                setattr(params, name, value)
        if overrides.get("do_sample") is True and params.temperature == 0:
            params.temperature = 1.0
        return params


@dataclass
class RowResult:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop", "length", "cancelled", or "error" (with isolate_rows)
    prompt_tokens: int = 0
    logprobs: list[dict] = field(default_factory=list)  # per token: {"token_id", "logprob", "top": [(id, lp)]}
    prompt_logprobs: list[dict] = field(default_factory=list)  # per prompt token, as `logprobs` (the first: None)
    error: str | None = None  # why the row failed (finish_reason "error"); the batch's other rows are unaffected


class TextDelta(str):
    """A text delta that also carries the logprobs of the tokens behind it (so streams carry them per chunk).

    A str subclass so that the engines pass it on as the plain text they already handle."""

    logprobs: list[dict]

    def __new__(cls, text: str, logprobs: list[dict]):
        delta = super().__new__(cls, text)
        delta.logprobs = logprobs
        return delta


class RowFailed(Exception):
    """One row's sampling produced no valid distribution."""


class RowSampler:
    def __init__(self, params: list[SamplingParams], device, tracker: "RowTracker", vocab_size: int | None = None):
        import torch

        from swiftlite.engine.logits import RowLogits

        self.params = params
        self.tracker = tracker  # where a failed row is marked finished
        self.generators = []
        for row, p in enumerate(params):
            generator = None
            if p.sampling:
                try:
                    generator = torch.Generator(device=device)
                    generator.manual_seed(p.seed if p.seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
                except (RuntimeError, OverflowError, ValueError) as error:  # e.g. a seed outside 64 bits
                    tracker.fail(row, f"seed {p.seed}: {error}")
            self.generators.append(generator)
        self.step_logprobs: list[list[dict]] = [[] for _ in params]
        # The tracker hands each text delta the logprobs of the tokens behind it (streamed logprobs).
        tracker.step_logprobs = self.step_logprobs
        self.shapers: list = [None] * len(params)
        for row, p in enumerate(params):
            if RowLogits.needed(p) and tracker.results[row].finish_reason is None:
                try:
                    self.shapers[row] = RowLogits(p, tracker.tokenizer, vocab_size)
                except Exception as error:  # a grammar llguidance refuses: this row fails, the others go on
                    tracker.fail(row, f"{type(error).__name__}: {error}")

    def __call__(self, input_ids, scores):
        import torch

        scores = scores.float()
        chosen_scores = torch.full_like(scores, float("-inf"))
        for row in range(len(self.params)):
            if self.tracker.results[row].finish_reason is not None:
                token = self.tracker.pad_token_id  # finished rows only wait for the others: any token will do
            else:
                try:
                    token = self._sample(row, input_ids, scores)
                except Exception as error:  # this row's settings or numbers: it ends, the batch goes on
                    self.tracker.fail(row, f"{type(error).__name__}: {error}")
                    token = self.tracker.pad_token_id
            chosen_scores[row, token] = 0.0
        return chosen_scores

    def _sample(self, row: int, input_ids, scores) -> int:
        import torch

        p = self.params[row]
        logits = scores[row]
        shaper = self.shapers[row]
        if p.repetition_penalty and p.repetition_penalty != 1.0:
            seen = torch.unique(input_ids[row])
            values = logits[seen]
            logits = logits.clone()
            logits[seen] = torch.where(values < 0, values * p.repetition_penalty, values / p.repetition_penalty)
        # Log-probabilities report the model's own distribution (after the repetition penalty), not the
        # one reshaped by temperature/top-k/top-p, which would read 0 or -inf under near-greedy settings, nor by
        # logit_bias, penalties or a grammar (as vLLM's default, the model's logprobs).
        model_logits = logits
        if shaper is not None:
            logits = shaper.shape(logits, self.tracker.results[row].token_ids)
        if p.sampling:
            logits = logits / max(p.temperature, 1e-5)
            if p.top_k and p.top_k > 0:
                kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if p.top_p is not None and p.top_p < 1.0:
                sorted_logits, order = torch.sort(logits, descending=True)
                cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
                drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= p.top_p
                drop[0] = False  # keep the likeliest token even when top_p (1e-300) rounds to 0 in float32
                logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
            probabilities = torch.softmax(logits, dim=-1)
            if not bool(torch.isfinite(probabilities).all()) or float(probabilities.sum()) <= 0:
                raise RowFailed("the sampling settings gave no valid probabilities (inf or NaN)")
            token = int(torch.multinomial(probabilities, 1, generator=self.generators[row]).item())
        else:
            if not bool(torch.isfinite(logits).any()):
                raise RowFailed("the logits are all inf or NaN")
            token = int(torch.argmax(logits).item())
        if p.logprobs:
            log_probs = torch.log_softmax(model_logits, dim=-1)
            top = torch.topk(log_probs, max(p.top_logprobs, 0)) if p.top_logprobs else None
            self.step_logprobs[row].append({
                "token_id": token,
                "logprob": float(log_probs[token]),
                "top": list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else [],
            })
        if shaper is not None:
            shaper.advance(token)
        return token


class RowTracker:
    """A transformers streamer: receives every step's tokens and keeps each row's text and state."""

    def __init__(self, tokenizer, params: list[SamplingParams], prompt_lengths: list[int],
                 on_delta: Callable[[int, str], None] | None, cancelled: Callable[[int], bool] | None):
        self.tokenizer = tokenizer
        self.params = params
        self.results = [RowResult(prompt_tokens=n) for n in prompt_lengths]
        self.on_delta = on_delta
        self.cancelled = cancelled
        self.seen_prompt = False
        self.emitted = [0] * len(params)  # characters of each row's text already reported
        self.emitted_tokens = [0] * len(params)  # tokens whose logprobs went with a delta
        self.step_logprobs: list[list[dict]] | None = None  # set by RowSampler
        self.pad_token_id = 0

    def fail(self, row: int, reason: str) -> None:
        """End one row as failed; its text so far is kept, nothing more is generated or reported for it."""
        result = self.results[row]
        if result.finish_reason is None:
            result.finish_reason = "error"
            result.error = reason

    def put(self, value) -> None:
        if not self.seen_prompt:  # generate() first hands over the prompt
            self.seen_prompt = True
            return
        tokens = value.tolist() if hasattr(value, "tolist") else list(value)
        if not isinstance(tokens, list):
            tokens = [tokens]
        for row, token in enumerate(tokens):
            try:
                self._step(row, int(token))
            except Exception as error:  # decoding or stop matching of this row only
                if self.results[row].finish_reason is None:
                    self.fail(row, f"{type(error).__name__}: {error}")
                else:
                    raise

    def _step(self, row: int, token: int) -> None:
        result, params = self.results[row], self.params[row]
        if result.finish_reason is not None:
            return
        if self.cancelled is not None and self.cancelled(row):
            result.finish_reason = "cancelled"
            return
        if token in params.stop_token_ids:
            result.finish_reason = "stop"
            self._emit(row, final=True)
            return
        result.token_ids.append(token)
        result.text = self.tokenizer.decode(result.token_ids, skip_special_tokens=False)
        for word in params.stop:
            position = result.text.find(word, max(0, self.emitted[row] - len(word)))
            if word and position >= 0:
                result.text = result.text[:position]
                result.finish_reason = "stop"
                self._emit(row, final=True)
                return
        if len(result.token_ids) >= params.max_new_tokens:
            result.finish_reason = "length"
            self._emit(row, final=True)
            return
        self._emit(row, final=False)

    def _emit(self, row: int, final: bool) -> None:
        text = self.results[row].text
        # Hold back a possible beginning of a stop word, and incomplete UTF-8 (shown as U+FFFD).
        safe = len(text)
        if not final:
            if text.endswith("\ufffd"):
                safe = len(text.rstrip("\ufffd"))
            for word in self.params[row].stop:
                for size in range(min(len(word) - 1, len(text)), 0, -1):
                    if text.endswith(word[:size]):
                        safe = min(safe, len(text) - size)
                        break
        if safe > self.emitted[row]:
            delta = text[self.emitted[row]:safe]
            self.emitted[row] = safe
            if self.params[row].logprobs and self.step_logprobs is not None:
                count = len(self.results[row].token_ids)
                delta = TextDelta(delta, self.step_logprobs[row][self.emitted_tokens[row]:count])
                self.emitted_tokens[row] = count
            if self.on_delta is not None:
                self.on_delta(row, delta)

    def end(self) -> None:
        for row, result in enumerate(self.results):
            if result.finish_reason is None:
                result.finish_reason = "length"
            if result.finish_reason != "error":
                self._emit(row, final=True)

    def finished(self) -> list[bool]:
        return [r.finish_reason is not None for r in self.results]


class RowStopper:
    def __init__(self, tracker: RowTracker):
        self.tracker = tracker

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        # Cancellation is checked here too so an abandoned row stops even before its next token arrives.
        if self.tracker.cancelled is not None:
            for row, result in enumerate(self.tracker.results):
                if result.finish_reason is None and self.tracker.cancelled(row):
                    result.finish_reason = "cancelled"
        return torch.tensor(self.tracker.finished(), dtype=torch.bool, device=input_ids.device)


def prompt_logprobs(model, batch: dict, params: list[SamplingParams], prompt_lengths: list[int],
                    extra: dict) -> list[list[dict]]:
    """One forward pass over the (left-padded) prompts: each prompt token's logprob given the ones before it."""
    import torch

    with torch.inference_mode():
        logits = model(**batch, **extra).logits.float()
    ids = batch["input_ids"]
    scored = []
    for row, (p, length) in enumerate(zip(params, prompt_lengths)):
        if p.prompt_logprobs is None:
            scored.append([])
            continue
        start = ids.shape[1] - length  # left padding
        log_probs = torch.log_softmax(logits[row, start:-1], dim=-1)  # position t predicts token t + 1
        targets = ids[row, start + 1:]
        chosen = log_probs.gather(1, targets[:, None])[:, 0]
        top = torch.topk(log_probs, p.prompt_logprobs) if p.prompt_logprobs else None
        first = {"token_id": int(ids[row, start]), "logprob": None, "top": []}  # nothing comes before it
        scored.append([first] + [{"token_id": int(targets[t]), "logprob": float(chosen[t]),
                        "top": list(zip(top.indices[t].tolist(), top.values[t].tolist())) if top is not None else []}
                       for t in range(len(targets))])
    return scored


def vocab_size(model) -> int | None:
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)() if config is not None else None
    return getattr(config, "vocab_size", None)


def model_device(model):
    import torch

    try:
        return next(p.device for p in model.parameters() if p.device.type != "meta")
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def move_batch(batch: dict, model) -> dict:
    """Tensors to the model's (first) device; floating media tensors to the model's dtype."""
    device = model_device(model)
    dtype = getattr(model, "dtype", None)
    moved = {}
    for key, value in batch.items():
        if hasattr(value, "to"):
            value = value.to(device)
            if value.is_floating_point() and dtype is not None:
                value = value.to(dtype)
        moved[key] = value
    return moved


# Fields of a checkpoint's generation_config that are not about decoding: kept while generating.
_TOKEN_ID_FIELDS = ("eos_token_id", "pad_token_id", "bos_token_id", "decoder_start_token_id")
_GENERATION_CONFIG_LOCK = threading.Lock()


def token_ids_only(generation_config):
    """A GenerationConfig with only the token ids of `generation_config`: nothing for generate() to fill in."""
    from transformers import GenerationConfig

    return GenerationConfig(**{name: getattr(generation_config, name, None) for name in _TOKEN_ID_FIELDS})


@contextmanager
def request_settings_only(model):
    """While `generate` runs, the model's generation_config holds token ids only.

    transformers fills every field the passed GenerationConfig leaves unset (None) from
    `model.generation_config`, and many logits processors switch on from a None default (suppress_tokens,
    bad_words_ids, forced_eos_token_id, ...), so no explicit value can switch them off. A checkpoint's
    repetition_penalty (Qwen2.5-Instruct ships 1.05), no_repeat_ngram_size or min_new_tokens would then apply
    on top of the request's own settings: twice for a default request, whose settings were already read from
    that file by `SamplingParams.from_generation_config`. The lock keeps concurrent calls from restoring
    each other's swap.
    """
    target = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
    original = getattr(target, "generation_config", None)
    if original is None:
        yield
        return
    neutral = token_ids_only(original)
    with _GENERATION_CONFIG_LOCK:
        target.generation_config = neutral
        try:
            yield
        finally:
            target.generation_config = original


def prepare_rows(model, template, rows: list[dict], params: list[SamplingParams], stop_ids,
                 on_delta=None, cancelled=None, extra: dict | None = None):
    """What every generation of encoded rows starts with (here, and the step engine's prefill): each row's stop
    tokens, the left-padded batch on the model's device, the rows' tracker and sampler, and the prompt's
    logprobs where a row asks for them (echo). Returns (batch, tracker, sampler)."""
    for p in params:
        p.stop_token_ids = sorted(set(p.stop_token_ids) | set(stop_ids))
    batch = template.collate(rows, padding_side="left")
    batch.pop("labels", None)
    batch = move_batch(batch, model)
    prompt_lengths = [len(row["input_ids"]) for row in rows]
    tracker = RowTracker(template.tokenizer, params, prompt_lengths, on_delta, cancelled)
    tracker.pad_token_id = template.pad_token_id if template.pad_token_id is not None else 0
    sampler = RowSampler(params, batch["input_ids"].device, tracker, vocab_size(model))
    if any(p.prompt_logprobs is not None for p in params):
        for row, scored in enumerate(prompt_logprobs(model, batch, params, prompt_lengths, extra or {})):
            tracker.results[row].prompt_logprobs = scored
    return batch, tracker, sampler


# Mllama runs its cross-attention layers for every row of a batch that carries images, a text-only row
# included (over a fully masked filler image, whose uniform attention is still gated into the residual), and
# skips them for a batch of text rows only. A text row batched beside an image row would be answered otherwise
# than alone, so these models generate their text rows and their image rows as separate batches.
TEXT_ROWS_APART_FROM_IMAGE_ROWS = {"mllama"}


def row_groups(model, rows: list[dict]) -> list[list[int]]:
    """The row indices that may share one batch: all rows, or text rows and image rows apart (see above)."""
    if getattr(getattr(model, "config", None), "model_type", None) not in TEXT_ROWS_APART_FROM_IMAGE_ROWS:
        return [list(range(len(rows)))]
    with_images = [index for index, row in enumerate(rows) if "pixel_values" in row]
    text_only = [index for index, row in enumerate(rows) if "pixel_values" not in row]
    return [group for group in (with_images, text_only) if group]


def generate(model, template, rows: list[dict], params: list[SamplingParams],
             on_delta: Callable[[int, str], None] | None = None,
             cancelled: Callable[[int], bool] | None = None,
             adapter_names: list[str] | None = None, isolate_rows: bool = False) -> list[RowResult]:
    """Generate for encoded rows (template.encode outputs) with per-row settings; returns one result per row.

    isolate_rows: a row whose own sampling fails ends with finish_reason "error" instead of raising."""
    groups = row_groups(model, rows)
    if len(groups) > 1:
        results: list[RowResult | None] = [None] * len(rows)
        for group in groups:
            group_results = generate(
                model, template, [rows[i] for i in group], [params[i] for i in group],
                on_delta=(lambda row, text, group=group: on_delta(group[row], text)) if on_delta else None,
                cancelled=(lambda row, group=group: cancelled(group[row])) if cancelled else None,
                adapter_names=[adapter_names[i] for i in group] if adapter_names is not None else None,
                isolate_rows=isolate_rows,
            )
            for index, result in zip(group, group_results):
                results[index] = result
        return results
    import torch
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    extra = {"adapter_names": adapter_names} if adapter_names is not None else {}
    stop_ids = template.stop_token_ids(getattr(model, "generation_config", None))
    batch, tracker, sampler = prepare_rows(model, template, rows, params, stop_ids, on_delta, cancelled, extra)
    config = GenerationConfig(
        max_new_tokens=max(p.max_new_tokens for p in params), do_sample=False, num_beams=1,
        pad_token_id=template.pad_token_id, eos_token_id=None, bos_token_id=None,
    )
    with torch.inference_mode(), request_settings_only(model):
        model.generate(
            **batch, generation_config=config, logits_processor=LogitsProcessorList([sampler]),
            stopping_criteria=StoppingCriteriaList([RowStopper(tracker)]), streamer=tracker, **extra,
        )
    tracker.end()
    failed = [result.error for result in tracker.results if result.finish_reason == "error"]
    if failed and not isolate_rows:
        raise RuntimeError(f"generation failed: {failed[0]}")
    for row, result in enumerate(tracker.results):
        if params[row].logprobs:
            result.logprobs = sampler.step_logprobs[row][: len(result.token_ids)]
    return tracker.results
