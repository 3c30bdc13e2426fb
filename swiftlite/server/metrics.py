"""Server metrics in the Prometheus text format (GET /metrics), written by hand: no client library needed.

Counters and histograms are updated from the event loop (requests) and from the engine's worker thread
(batches), so every update takes one lock. Names follow Prometheus conventions (`_total`, `_seconds`).
"""

from __future__ import annotations

import threading

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        lines = [f'{name}_bucket{{le="{_number(bound)}"}} {count}' for bound, count in zip(self.buckets, self.counts)]
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {_number(self.total)}")
        lines.append(f"{name}_count {self.count}")
        return lines


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}  # (endpoint, status) -> count
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.cancelled = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        self.time_to_first_token = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.waiting = 0  # requests queued for the engine
        self.running = 0  # rows in the batch being generated

    # ---- updates ----------------------------------------------------------------------------------
    def request_done(self, endpoint: str, status: int, latency: float | None = None) -> None:
        with self.lock:
            key = (endpoint, int(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            if latency is not None:
                self.latency.observe(latency)

    def tokens(self, prompt: int, generated: int) -> None:
        with self.lock:
            self.prompt_tokens += prompt
            self.generation_tokens += generated

    def first_token(self, seconds: float) -> None:
        with self.lock:
            self.time_to_first_token.observe(seconds)

    def request_cancelled(self) -> None:
        with self.lock:
            self.cancelled += 1

    def batch_started(self, rows: int, waiting: int) -> None:
        with self.lock:
            self.batch_size.observe(rows)
            self.running = rows
            self.waiting = waiting

    def batch_finished(self) -> None:
        with self.lock:
            self.running = 0

    def queue_length(self, waiting: int) -> None:
        with self.lock:
            self.waiting = waiting

    # ---- exposition -------------------------------------------------------------------------------
    def render(self) -> str:
        with self.lock:
            lines = [
                "# HELP swiftlite_requests_total HTTP requests answered, by endpoint and status code.",
                "# TYPE swiftlite_requests_total counter",
            ]
            for (endpoint, status), count in sorted(self.requests.items()):
                lines.append(f'swiftlite_requests_total{{endpoint="{endpoint}",status="{status}"}} {count}')
            lines += [
                "# HELP swiftlite_requests_cancelled_total Generations stopped because the client went away.",
                "# TYPE swiftlite_requests_cancelled_total counter",
                f"swiftlite_requests_cancelled_total {self.cancelled}",
                "# HELP swiftlite_prompt_tokens_total Prompt tokens run through the model (image tokens in; x n).",
                "# TYPE swiftlite_prompt_tokens_total counter",
                f"swiftlite_prompt_tokens_total {self.prompt_tokens}",
                "# HELP swiftlite_generation_tokens_total Tokens generated (rows later cancelled included).",
                "# TYPE swiftlite_generation_tokens_total counter",
                f"swiftlite_generation_tokens_total {self.generation_tokens}",
                "# HELP swiftlite_request_latency_seconds Time from request arrival to its last byte.",
                "# TYPE swiftlite_request_latency_seconds histogram",
                *self.latency.lines("swiftlite_request_latency_seconds"),
                "# HELP swiftlite_time_to_first_token_seconds Time from request arrival to its first generated text.",
                "# TYPE swiftlite_time_to_first_token_seconds histogram",
                *self.time_to_first_token.lines("swiftlite_time_to_first_token_seconds"),
                "# HELP swiftlite_batch_size Rows (prompts x n) per generation batch.",
                "# TYPE swiftlite_batch_size histogram",
                *self.batch_size.lines("swiftlite_batch_size"),
                "# HELP swiftlite_queue_length Requests waiting for a place in a batch.",
                "# TYPE swiftlite_queue_length gauge",
                f"swiftlite_queue_length {self.waiting}",
                "# HELP swiftlite_running_rows Rows in the batch being generated now.",
                "# TYPE swiftlite_running_rows gauge",
                f"swiftlite_running_rows {self.running}",
            ]
        return "\n".join(lines) + "\n"
