"""Iteration-level batching: rows join and leave between decode steps.

`StepEngine` keeps the narrow interface of `BatchingEngine` (submit / stream / cancel, drain, shutdown) and
replaces what runs behind it. Between two decode steps, waiting requests that fit join and finished rows leave:

- a request that arrives mid-batch starts at the next step, not when the longest row of the batch ends;
- a row that finishes (stop, length, cancelled: its client left) leaves at once and frees its place;
- a row that fails (an out-of-memory error in its prefill, its own sampling) fails its request only: 503 for
  out-of-memory (retry later, or with a shorter request), 500 for anything else; the other rows go on.

Two ways to run the rows, chosen per model at start-up (`step_batch.per_row_reason`):

- Batched (text families, LLaVA, LLaVA-NeXT/OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, GLM-4V, InternVL, Idefics3,
  PaliGemma, ...): a joining row is prefilled alone by the model's own forward, then every decoding row takes its
  step in ONE forward over a shared, left-padded KV cache (step_batch.py). Sampling stays per row: each row has
  its own `RowSampler` and `RowTracker` (engine/generate.py: seeds, penalties, logprobs, logit_bias, grammars,
  stop strings), so its tokens and logprobs are those of the row alone (up to float rounding, ~1e-6 in fp32).
  An out-of-memory error in a decode step fails the row that joined last (the batch ran before it came).
- Per row (Gemma 3: sliding-window cache; Mllama: cross-attention cache; linear-attention layers): every running
  row is one `model.generate` of one row on a thread of its own, and the engine hands out the model one forward
  at a time, row after row. Only one row runs model code at a time: the threads pause `generate` between steps
  (a forward pre-hook is the pause point), they are not parallelism. Per-call state a model keeps on itself
  (`rope_deltas`) and the active LoRA adapter are swapped in for each row's turn. Decode is not batched here.

Why not transformers' continuous batching (`generate_batch`, the ContinuousBatchingManager, paged attention)?
It decodes every request with one GenerationConfig and its own sampler, so the per-row work of
`engine.generate` (`RowSampler`: seeds, penalties, logprobs, logit bias, grammars) could not run, and it takes
text-only inputs (no pixel_values), which rules out the multimodal families.

Admission: a row costs its prompt plus its max_new_tokens (the most KV cache it can need). Requests enter first
come first served while the running rows' cost stays within `max_num_batched_tokens` and their number within
`max_batch_size`; the first that does not fit waits (and so do those behind it), a full queue is a 429. A request
larger than the whole budget runs alone once the engine is empty, rather than never.

Adapters: when every row of a step uses one adapter (or none), it is switched on (peft's `set_adapter`, or the
adapter layers off for the base model) instead of going through peft's mixed-batch `adapter_names` path, which
splits every LoRA layer's input by adapter at every step; a step with rows of several adapters takes that path.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from swiftlite.engine.generate import RowResult, RowSampler, RowStopper, RowTracker, SamplingParams, prepare_rows, \
    token_ids_only
from swiftlite.engine.step_batch import BatchedRow, DecodeBatch, cache_keyword, per_row_reason, prefill, \
    take_token
from swiftlite.engine.worker import BASE_ADAPTER, BatchingEngine, ChoiceFinished, EngineFailed, RequestStream, \
    TokenDelta

logger = logging.getLogger("swiftlite.engine")

MODEL_STATE = ("rope_deltas",)  # per-call state some models keep on a module (Qwen2-VL, Qwen2.5-VL, GLM-4V)


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or a CPU allocator that could not allocate (RuntimeError / MemoryError)."""
    import torch

    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def row_cost(stream: RequestStream) -> int:
    """Tokens a request may hold in KV cache: each row's prompt plus its max_new_tokens."""
    return sum(len(row["input_ids"]) + params.max_new_tokens
               for row, params in zip(stream.request.rows, stream.request.params))


@dataclass
class Row:
    stream: RequestStream
    choice: int
    encoded: dict
    params: SamplingParams
    adapter: str
    go: threading.Event = field(default_factory=threading.Event)  # the engine gives this row its next step
    paused: threading.Event = field(default_factory=threading.Event)  # the row is back: its step is done
    forwards: int = 0
    finished: bool = False
    result: RowResult | None = None
    error: BaseException | None = None
    state: list = field(default_factory=list)  # its values of the model's per-call state (MODEL_STATE)
    tracker: RowTracker | None = None
    sampler: RowSampler | None = None
    batched: BatchedRow | None = None  # its decoding state on the batched path, from its prefill on


class RowCancelled(Exception):
    """Raised in a row's thread at its turn when its client left: its generate ends without another forward."""


class StepEngine(BatchingEngine):
    def __init__(self, model, template, max_batch_size: int = 16, max_queue: int = 256, batch_wait: float = 0.05,
                 metrics=None, max_num_batched_tokens: int | None = None):
        super().__init__(model, template, max_batch_size=max_batch_size, max_queue=max_queue,
                         batch_wait=batch_wait, metrics=metrics)
        self.max_num_batched_tokens = max_num_batched_tokens
        self.running: list[Row] = []
        self.reserved = 0  # the running rows' cost in tokens
        self.local = threading.local()  # .row on a row's thread
        self.inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        # Rows generate concurrently (one forward at a time), so the static engine's per-call swap of the
        # generation_config (request_settings_only, under a lock) cannot be used: this engine owns the model for
        # its life and strips the config once. Callers read the checkpoint's defaults before building the engine.
        if getattr(self.inner, "generation_config", None) is not None:
            self.inner.generation_config = token_ids_only(self.inner.generation_config)
        self.state_holders = [(module, name) for module in self.inner.modules() for name in MODEL_STATE
                              if hasattr(module, name)]
        self.active_adapter: str | None = None  # unknown until the first row sets it
        self.hook = None
        self.per_row = per_row_reason(self.inner)  # None: decode every running row in one forward (step_batch.py)
        self.batch = DecodeBatch(cache_keyword(self.inner))
        if self.per_row:
            logger.info("the step engine runs one row per forward pass: %s", self.per_row)

    # ---- admission (the engine thread, under self.condition) -------------------------------------------------
    def _move_fitting(self, batch: list[RequestStream], rows: int) -> int:
        """Move waiting requests into `batch` while their rows fit max_batch_size and their cost the budget."""
        running_rows = len(self.running)
        tokens = self.reserved + sum(row_cost(stream) for stream in batch)
        while self.waiting:
            stream = self.waiting[0]
            if stream.cancelled:  # its client left while it waited: end its stream, or its handler waits forever
                self._drop_cancelled()
                continue
            if running_rows + rows + len(stream.request.rows) > self.max_batch_size:
                break
            cost = row_cost(stream)
            empty = running_rows == 0 and not batch
            if self.max_num_batched_tokens is not None and tokens + cost > self.max_num_batched_tokens and not empty:
                break
            batch.append(self.waiting.popleft())
            rows += len(stream.request.rows)
            tokens += cost
        return rows

    def _admit(self, streams: list[RequestStream]) -> None:
        for stream in streams:
            self.reserved += row_cost(stream)
            for choice, (encoded, params) in enumerate(zip(stream.request.rows, stream.request.params)):
                row = Row(stream, choice, encoded, params, stream.request.adapter or BASE_ADAPTER,
                          state=[None] * len(self.state_holders))
                if self.per_row:
                    threading.Thread(target=self._row_main, args=(row,), name="swiftlite-row", daemon=True).start()
                self.running.append(row)

    # ---- the engine thread ---------------------------------------------------------------------------------
    def _work(self) -> None:
        self._neutral_generation_config()
        if self.per_row:
            self.hook = self.inner.register_forward_pre_hook(self._before_forward)
        try:
            while True:
                if not self.running:
                    batch = self._take_batch()  # idle: wait for requests, coalescing clients as the static engine
                    if batch is None:
                        return
                    self._admit(batch)
                    if not self.running:
                        continue
                    if self.metrics is not None:
                        self.metrics.batch_started(len(self.running), len(self.waiting))
                elif not self.stopping:  # draining still runs what is queued, as the static engine does
                    with self.condition:  # busy: whoever fits joins now, for the next step
                        joining: list[RequestStream] = []
                        self._move_fitting(joining, 0)
                        self._report_queue()
                    if joining:
                        self._admit(joining)
                        if self.metrics is not None:  # the batch as it is now, with the rows that joined it
                            self.metrics.batch_started(len(self.running), len(self.waiting))
                self._step()
                if self.metrics is not None:
                    self.metrics.running.set(len(self.running))
                    if not self.running:
                        self.metrics.batch_finished()
        finally:
            if self.hook is not None:
                self.hook.remove()

    def _step(self) -> None:
        """One decode step of every running row; rows that ended leave."""
        if not self.per_row:
            try:
                self._batched_step()
            except Exception as error:  # a bug in the batch's bookkeeping: its rows fail, the engine thread goes on
                logger.exception("the decode batch failed")
                for row in self.running:
                    if not row.finished:
                        self._fail_row(row, error)
                    self._finish(row)
                self.running.clear()
                self.batch.keep([])
        else:
            self._per_row_step()
        if not self.running:
            self.reserved = 0

    def _per_row_step(self) -> None:
        """One forward pass for each running row, in turn (its own generate, on its thread)."""
        for row in list(self.running):
            try:
                self._swap_in(row)
            except Exception as error:  # its adapter or model state could not be set: it fails, the others go on
                logger.exception("could not prepare a row's turn")
                row.error = error
                row.stream.cancelled = True  # its thread ends at its next forward, before running anything
            row.paused.clear()
            row.go.set()
            row.paused.wait()
            row.state = [getattr(module, name) for module, name in self.state_holders]
            if row.finished:
                self.running.remove(row)
                self._finish(row)

    def _swap_in(self, row: Row) -> None:
        for (module, name), value in zip(self.state_holders, row.state):
            setattr(module, name, value)
        self._use_adapter(row.adapter)

    def _use_adapter(self, adapter: str) -> None:
        """Switch one adapter on (or the adapter layers off for the base model), unless it is on already."""
        if not self.uses_adapters or adapter == self.active_adapter:
            return
        tuner = self.model.base_model  # peft's LoraModel
        if adapter == BASE_ADAPTER:
            tuner.disable_adapter_layers()
        else:
            if self.active_adapter in (None, BASE_ADAPTER):
                tuner.enable_adapter_layers()
            self.model.set_adapter(adapter)
        self.active_adapter = adapter

    # ---- the batched path (step_batch.py) ------------------------------------------------------------------
    def _batched_step(self) -> None:
        """Rows that joined are prefilled alone, then every decoding row takes one step in one forward."""
        for row in self.running:
            if row.batched is None and not row.finished:
                self._join(row)
        self._decode()
        for row in list(self.running):
            if row.finished:
                self.running.remove(row)
                self._finish(row)

    def _join(self, row: Row) -> None:
        stream = row.stream
        if stream.cancelled or self.aborting:  # its client left before its turn: it costs nothing
            row.result = RowResult(finish_reason="cancelled", prompt_tokens=len(row.encoded["input_ids"]))
            row.finished = True
            return

        def on_delta(_: int, text: str) -> None:
            if text:
                stream.put(TokenDelta(row.choice, text))

        try:
            self._use_adapter(row.adapter)
            cache, logits = prefill(self, row, on_delta, lambda _: stream.cancelled or self.aborting)
            take_token(row, logits)
            if row.tracker.results[0].finish_reason is None:
                self.batch.add(row, cache)
        except Exception as error:  # its prefill or its place in the batch (out of memory, a bad input): it fails
            self._fail_row(row, error)
            return
        if row.tracker.results[0].finish_reason is not None:
            self._end_row(row)

    def _decode(self) -> None:
        for row in self.batch.rows:  # a client that left: its row leaves before the forward
            result = row.tracker.results[0]
            if result.finish_reason is None and (row.stream.cancelled or self.aborting):
                result.finish_reason = "cancelled"
        self._leave()
        rows = self.batch.rows
        if not rows:
            return
        extra = {}
        adapters = {row.adapter for row in rows}
        if self.uses_adapters and len(adapters) > 1:  # mixed: peft splits each LoRA layer's input by adapter
            self._use_adapter(next(name for name in adapters if name != BASE_ADAPTER))  # the adapter layers on
            extra["adapter_names"] = [row.adapter for row in rows]
        elif self.uses_adapters:
            self._use_adapter(rows[0].adapter)
        import torch

        try:
            with torch.inference_mode():
                logits = self.batch.forward(self.model, bool(self.state_holders), extra)
        except Exception as error:
            if is_out_of_memory(error):  # the newest row is the one the batch did not fit with: it alone fails
                self._fail_row(rows[-1], error)
            else:  # the forward all rows share failed: each fails
                for row in rows:
                    self._fail_row(row, error)
            self._leave()
            return
        for index, row in enumerate(rows):
            row.batched.cached += 1  # the token fed is in the cache now
            take_token(row, logits[index:index + 1])
        self._leave()

    def _leave(self) -> None:
        """Rows that ended (stop, length, cancelled, failed) leave the decode batch."""
        ended = [row for row in self.batch.rows if row.finished or row.tracker.results[0].finish_reason is not None]
        if not ended:
            return
        for row in ended:
            if not row.finished:
                self._end_row(row)
        self.batch.keep([row for row in self.batch.rows if row not in ended])

    def _end_row(self, row: Row) -> None:
        row.tracker.end()
        row.result = self._result(row)
        row.finished = True

    def _fail_row(self, row: Row, error: BaseException) -> None:
        row.error = error
        if row.tracker is not None:
            row.tracker.fail(0, f"{type(error).__name__}: {error}")
            row.result = self._result(row)
        row.finished = True
        if is_out_of_memory(error):
            _free_device_cache()

    def _finish(self, row: Row) -> None:
        stream = row.stream
        self.reserved -= len(row.encoded["input_ids"]) + row.params.max_new_tokens
        result = row.result
        if self.metrics is not None and result is not None:
            self.metrics.tokens(len(row.encoded["input_ids"]), len(result.token_ids))
        if getattr(stream, "failed", False):
            return  # a sibling row (n > 1) already failed the request
        if row.error is None and result.finish_reason != "error":
            stream.put(ChoiceFinished(row.choice, result))
            return
        stream.failed = True
        stream.cancelled = True  # its other rows stop at their next step
        if self.metrics is not None:
            self.metrics.row_failed()
        if row.error is not None and is_out_of_memory(row.error):
            logger.warning("out of memory in one request (%d prompt tokens); the others go on: %s",
                           len(row.encoded["input_ids"]), row.error)
            stream.put(EngineFailed(f"out of memory for this request ({len(row.encoded['input_ids'])} prompt "
                                    "tokens): retry later, or with a shorter prompt or max_tokens",
                                    status=503, code="out_of_memory"))
        elif row.error is not None:
            logger.error("one request failed, the others went on", exc_info=row.error)
            stream.put(EngineFailed(f"generation failed: {type(row.error).__name__}: {row.error}"))
        else:
            logger.warning("one row failed, the others went on: %s", result.error)
            stream.put(EngineFailed(f"generation failed for this request: {result.error or 'unknown error'}"))

    def _neutral_generation_config(self) -> None:
        """The model's generation_config holds token ids only, for good (see generate.request_settings_only):
        the engine owns the model, and a per-call swap under a lock cannot work with rows taking turns."""
        original = getattr(self.inner, "generation_config", None)
        self.stop_ids = self.template.stop_token_ids(original)
        if original is not None:
            self.inner.generation_config = token_ids_only(original)

    # ---- a row's thread ----------------------------------------------------------------------------------
    def _before_forward(self, module, args):
        row = getattr(self.local, "row", None)
        if row is None:
            return None
        # Every forward after the first waits for the row's next turn, unless nobody else needs the model: a lone
        # row with nothing queued keeps it (each hand-over costs two thread switches, more than a tiny model's step).
        if row.forwards and (len(self.running) > 1 or self.waiting or self.stopping or row.stream.cancelled
                             or self.aborting):
            row.paused.set()
            row.go.wait()
            row.go.clear()
        if row.stream.cancelled or self.aborting:  # before its prefill too: a row whose client left costs nothing
            raise RowCancelled()
        row.forwards += 1
        return None

    def _row_main(self, row: Row) -> None:
        row.go.wait()
        row.go.clear()
        self.local.row = row
        try:
            row.result = self._generate(row)
        except RowCancelled:
            row.tracker.results[0].finish_reason = "cancelled"
            row.tracker.end()
            row.result = self._result(row)
        except BaseException as error:  # noqa: BLE001 - whatever it is, it is this row's and is reported
            row.error = row.error or error
            if is_out_of_memory(error):
                _free_device_cache()
        finally:
            row.finished = True
            row.paused.set()

    def _generate(self, row: Row) -> RowResult:
        """`engine.generate` for one row (the same RowSampler/RowTracker), without the generation_config lock."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        params = row.params
        stream = row.stream

        def on_delta(_: int, text: str) -> None:
            if text:
                stream.put(TokenDelta(row.choice, text))

        def cancelled(_: int) -> bool:
            return stream.cancelled or self.aborting

        batch, tracker, sampler = prepare_rows(self.model, self.template, [row.encoded], [params], self.stop_ids,
                                               on_delta, cancelled)
        row.tracker, row.sampler = tracker, sampler
        config = GenerationConfig(max_new_tokens=params.max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=self.template.pad_token_id, eos_token_id=None, bos_token_id=None)
        with torch.inference_mode():
            self.model.generate(**batch, generation_config=config, logits_processor=LogitsProcessorList([sampler]),
                                stopping_criteria=StoppingCriteriaList([RowStopper(tracker)]), streamer=tracker)
        tracker.end()
        return self._result(row)

    @staticmethod
    def _result(row: Row) -> RowResult:
        result = row.tracker.results[0]
        if row.params.logprobs:
            result.logprobs = row.sampler.step_logprobs[0][: len(result.token_ids)]
        return result


def _free_device_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
