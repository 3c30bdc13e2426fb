"""Server metrics in the Prometheus text format (GET /metrics), kept by `prometheus_client`.

The `endpoint` label takes only the names in ROUTES (anything else is "other"), so a client cannot grow
/metrics with one series per invented path, nor inject lines through a path holding quotes or newlines;
prometheus_client escapes label values besides. Each server has its own registry (several servers in one
test process must not share counters). Counters and histograms are updated from the event loop (requests) and
from the engine's worker thread (batches); prometheus_client's updates are thread-safe.
"""

from __future__ import annotations

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ROUTES = ("/v1/models", "/v1/chat/completions", "/v1/completions", "/health", "/metrics", "/", "/static")
STATUSES = {200, 400, 401, 403, 404, 405, 408, 413, 415, 429, 499, 500, 503}


def route_label(path: str) -> str:
    """One of a fixed set of names for a request path (the label value of `endpoint`)."""
    if path in ROUTES:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    if path.startswith("/static/"):
        return "/static"
    return "other"


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        try:  # the *_created series only double the output; they are not part of what we report
            from prometheus_client import disable_created_metrics

            disable_created_metrics()
        except ImportError:  # pragma: no cover - older prometheus_client
            pass
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("swiftlite_requests", "HTTP requests answered, by endpoint and status code.",
                                ["endpoint", "status"], registry=r)
        self.cancelled = Counter("swiftlite_requests_cancelled", "Generations stopped because the client went away.",
                                 registry=r)
        self.prompt_tokens = Counter("swiftlite_prompt_tokens", "Prompt tokens run through the model (image tokens "
                                     "in; x n).", registry=r)
        self.generation_tokens = Counter("swiftlite_generation_tokens", "Tokens generated (rows later cancelled "
                                         "included).", registry=r)
        self.row_failures = Counter("swiftlite_row_failures", "Rows whose generation failed on their own (the "
                                    "other rows of their batch went on).", registry=r)
        self.latency = Histogram("swiftlite_request_latency_seconds", "Time from request arrival to its last byte.",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.time_to_first_token = Histogram("swiftlite_time_to_first_token_seconds", "Time from request arrival to "
                                             "its first generated text.", buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("swiftlite_batch_size", "Rows (prompts x n) per generation batch.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.waiting = Gauge("swiftlite_queue_length", "Requests waiting for a place in a batch.", registry=r)
        self.running = Gauge("swiftlite_running_rows", "Rows in the batch being generated now.", registry=r)

    # ---- updates ----------------------------------------------------------------------------------
    def request_done(self, path: str, status: int, latency: float | None = None) -> None:
        status = int(status)
        self.requests.labels(route_label(path), str(status) if status in STATUSES else "other").inc()
        if latency is not None:
            self.latency.observe(latency)

    def tokens(self, prompt: int, generated: int) -> None:
        self.prompt_tokens.inc(prompt)
        self.generation_tokens.inc(generated)

    def first_token(self, seconds: float) -> None:
        self.time_to_first_token.observe(seconds)

    def request_cancelled(self) -> None:
        self.cancelled.inc()

    def row_failed(self) -> None:
        self.row_failures.inc()

    def batch_started(self, rows: int, waiting: int) -> None:
        self.batch_size.observe(rows)
        self.running.set(rows)
        self.waiting.set(waiting)

    def batch_finished(self) -> None:
        self.running.set(0)

    def queue_length(self, waiting: int) -> None:
        self.waiting.set(waiting)

    # ---- exposition -------------------------------------------------------------------------------
    def render(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode("utf-8")
