"""The batching engine: one worker thread owns the model and serves every request through it.

One thread, because concurrent `generate` calls on one model are unsafe (Qwen2-VL's M-RoPE keeps per-call
state on the model) and would only fight over the same cores or GPU anyway. Requests that arrive while a
batch runs wait in a queue; when the batch ends, the worker takes as many waiting requests as fit into
`max_batch_size` rows (a request with `n` choices is `n` rows) and generates them as one left-padded batch.
Rows keep their own sampling settings, stop words and LoRA adapter (`engine.generate` does the per-row work;
rows for different adapters share a batch through peft's `adapter_names`).

This is `mm deploy --engine static`. The default, `--engine step` (engine/step_loop.py, a subclass of this one),
lets rows join and leave between decode steps; the HTTP layer sees only this narrow interface either way:

    stream = engine.submit(EngineRequest(rows, params, adapter))   # QueueFull at once when the queue is full
    async for event in stream: ...                                 # TokenDelta, ChoiceFinished, EngineFailed
    stream.cancel()                                                # the client went away: stop its rows

Encoding (images, chat template) happens before `submit`, in the request handler's thread pool, so a bad
image is a 400 before anything is queued and the worker only ever runs the model.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass

from swiftlite.engine.generate import RowResult, SamplingParams, generate

logger = logging.getLogger("swiftlite.engine")

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch
IDLE_RESET = 1.0  # seconds without requests after which the clients of the last batch are no longer expected


@dataclass
class EngineRequest:
    rows: list[dict]  # template.encode outputs, one per choice
    params: list[SamplingParams]  # one per row
    adapter: str | None = None  # peft adapter name; None is the base model


@dataclass
class TokenDelta:
    choice: int
    text: str


@dataclass
class ChoiceFinished:
    choice: int
    result: RowResult


@dataclass
class EngineFailed:
    message: str
    status: int = 500  # 503 when the server is shutting down: the request was fine, a retry elsewhere may work
    code: str | None = None  # the error's code in the answer (default: by status)


class QueueFull(Exception):
    pass


class EngineStopped(Exception):
    pass


class RequestStream:
    """The events of one request, delivered from the worker thread to the request's event loop.

    The worker appends to a deque and schedules a wake-up only when none is pending: when the handler falls
    behind (a busy event loop, a slow client), the events that piled up are taken in one go rather than with
    one loop callback (and one self-pipe write) each.
    """

    def __init__(self, request: EngineRequest, loop: asyncio.AbstractEventLoop):
        self.request = request
        self.loop = loop
        self.pending: collections.deque = collections.deque()
        self.ready = asyncio.Event()
        self.wake_scheduled = False
        self.cancelled = False  # set by the HTTP layer, read by the worker between decode steps
        self.remaining = len(request.rows)
        self.done = False

    def cancel(self) -> None:
        self.cancelled = True

    def put(self, event) -> None:
        """Called from the worker thread."""
        self.pending.append(event)  # appended before the flag is read: a wake-up in flight will see it
        if self.wake_scheduled:
            return
        self.wake_scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: the server is gone, nobody is listening
            self.cancelled = True

    def _wake(self) -> None:
        self.wake_scheduled = False
        self.ready.set()

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.done:
            raise StopAsyncIteration
        while not self.pending:
            self.ready.clear()
            if self.pending:
                break
            await self.ready.wait()
        event = self.pending.popleft()
        if isinstance(event, ChoiceFinished):
            self.remaining -= 1
            self.done = self.remaining == 0
        elif isinstance(event, EngineFailed):
            self.done = True
        return event


class Drains:
    """`drain` for every engine (pt and vLLM): each says in `_abort` how its running and queued work is stopped."""

    draining = False  # no new requests; queued and running ones may still finish

    def drain(self, timeout: float) -> None:
        """Take no new requests; what is queued or running gets `timeout` seconds, then is stopped.

        Called from a signal handler: it only sets a flag and starts a timer (no lock).
        """
        if self.draining:
            return
        self.draining = True
        timer = threading.Timer(timeout, self._abort)
        timer.daemon = True
        timer.start()

    def _abort(self) -> None:
        raise NotImplementedError


class BatchingEngine(Drains):
    def __init__(self, model, template, max_batch_size: int = 16, max_queue: int = 256,
                 batch_wait: float = 0.05, metrics=None):
        self.model = model
        self.template = template
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.batch_wait = batch_wait
        self.metrics = metrics
        # A peft model takes `adapter_names` (one per row); a plain model takes none.
        self.uses_adapters = hasattr(model, "peft_config")
        self.waiting: collections.deque[RequestStream] = collections.deque()
        self.condition = threading.Condition()
        self.stopping = False  # the worker ends
        self.draining = False  # no new requests; queued and running ones may still finish
        self.aborting = False  # out of patience: stop the running rows and fail the queued requests
        self.last_batch_requests = 0
        self.thread: threading.Thread | None = None

    # ---- the interface --------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread = threading.Thread(target=self._work, name="swiftlite-engine", daemon=True)
        self.thread.start()

    def submit(self, request: EngineRequest) -> RequestStream:
        """Queue a request (call from the event loop). Raises QueueFull or EngineStopped at once."""
        if not 0 < len(request.rows) <= self.max_batch_size:
            raise ValueError(f"a request needs 1 to {self.max_batch_size} rows, got {len(request.rows)}")
        stream = RequestStream(request, asyncio.get_running_loop())
        with self.condition:
            if self.stopping or self.draining:
                raise EngineStopped("the server is shutting down")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are already waiting (--max_queue {self.max_queue})")
            self.waiting.append(stream)
            self._report_queue()
            self.condition.notify()
        return stream

    def _abort(self) -> None:
        with self.condition:
            self.aborting = True  # running rows end at their next step, with finish_reason "cancelled"
            while self.waiting:
                self.waiting.popleft().put(EngineFailed("the server is shutting down", status=503))
            self._report_queue()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Refuse new work, fail what waits, let the running batch finish (cancel it after `timeout`)."""
        with self.condition:
            self.stopping = True
            while self.waiting:
                self.waiting.popleft().put(EngineFailed("the server is shutting down", status=503))
            self._report_queue()
            self.condition.notify_all()
        if self.thread is None:
            return
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.aborting = True
            self.thread.join(timeout)

    @property
    def queue_length(self) -> int:
        return len(self.waiting)

    # ---- the worker thread -------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            self._run(batch)

    def _take_batch(self) -> list[RequestStream] | None:
        with self.condition:
            # Clients in a closed loop come back together: those of the batch that just ended will be back in a
            # few milliseconds, and those already waiting are here. Starting with only the first arrivals would
            # split them into alternating half batches for good, so wait (at most batch_wait) for that many.
            # A lone client expects no one and never waits; nor does anyone after a long idle spell.
            expected = self.last_batch_requests + len(self.waiting)
            idle_since = time.monotonic()
            while not self.waiting and not self.stopping:
                self.condition.wait()
            if self.stopping:
                return None
            if time.monotonic() - idle_since > IDLE_RESET:
                expected = 0
            batch: list[RequestStream] = []
            rows = self._move_fitting(batch, 0)
            deadline = time.monotonic() + self.batch_wait
            while rows < self.max_batch_size and len(batch) < expected and not self.stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.condition.wait(remaining)
                rows = self._move_fitting(batch, rows)
            self.last_batch_requests = len(batch)
            self._report_queue()
            return batch

    def _drop_cancelled(self) -> None:
        """Take the cancelled request at the head of the queue off it, each choice answered "cancelled"."""
        stream = self.waiting.popleft()
        for choice, row in enumerate(stream.request.rows):
            stream.put(ChoiceFinished(choice, RowResult(finish_reason="cancelled",
                                                        prompt_tokens=len(row["input_ids"]))))

    def _move_fitting(self, batch: list[RequestStream], rows: int) -> int:
        """Move waiting requests into the batch, first come first served, while their rows fit."""
        while self.waiting:
            stream = self.waiting[0]
            if stream.cancelled:  # its client left while it waited: end its stream, or its handler waits forever
                self._drop_cancelled()
                continue
            if rows + len(stream.request.rows) > self.max_batch_size:
                break
            batch.append(self.waiting.popleft())
            rows += len(stream.request.rows)
        return rows

    def _run(self, batch: list[RequestStream]) -> None:
        rows, params, adapters, owners = [], [], [], []
        for stream in batch:
            for choice, (row, row_params) in enumerate(zip(stream.request.rows, stream.request.params)):
                rows.append(row)
                params.append(row_params)
                adapters.append(stream.request.adapter or BASE_ADAPTER)
                owners.append((stream, choice))
        if not rows:
            return

        def on_delta(row: int, text: str) -> None:
            stream, choice = owners[row]
            if text:
                stream.put(TokenDelta(choice, text))

        def cancelled(row: int) -> bool:
            return owners[row][0].cancelled or self.aborting

        if self.metrics is not None:
            self.metrics.batch_started(len(rows), len(self.waiting))
        try:
            results = generate(self.model, self.template, rows, params, on_delta=on_delta, cancelled=cancelled,
                               adapter_names=adapters if self.uses_adapters else None, isolate_rows=True)
        except Exception as error:  # a failure of the model's shared forward pass: every request gets a 500
            logger.exception("generation failed for a batch of %d rows", len(rows))
            for stream in batch:
                stream.put(EngineFailed(f"generation failed: {type(error).__name__}: {error}"))
            return
        finally:
            if self.metrics is not None:
                self.metrics.batch_finished()
        if self.metrics is not None:  # counted here so that cancelled rows' work shows too
            self.metrics.tokens(sum(len(row["input_ids"]) for row in rows),
                                sum(len(result.token_ids) for result in results))
        # A row that failed on its own fails its request only; the batch's other requests get their answers.
        failures: dict[int, str] = {}  # id(stream) -> the reason of its first failed row
        for row, result in enumerate(results):
            if result.finish_reason == "error":
                failures.setdefault(id(owners[row][0]), result.error or "unknown error")
                logger.warning("one row of a batch failed, the others went on: %s", result.error)
                if self.metrics is not None:
                    self.metrics.row_failed()
        reported = set()
        for row, result in enumerate(results):
            stream, choice = owners[row]
            if id(stream) not in failures:
                stream.put(ChoiceFinished(choice, result))
            elif id(stream) not in reported:
                reported.add(id(stream))
                stream.put(EngineFailed(f"generation failed for this request: {failures[id(stream)]}"))

    def _report_queue(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_length(len(self.waiting))
