"""`mm deploy` stays healthy under abuse: a mixed load with malformed and hostile requests (all good ones answered,
all bad ones their 4xx, no 5xx, no memory growth; the kinds are scripts/soak_serve.py's), clients that vanish
mid-answer (the server goes idle at once and serves the next request), and SIGTERM (no new connections, in-flight
requests finish, exit 0).

One real `mm deploy` process serves the whole module (starting one costs ~20 s of imports on this machine);
the SIGTERM test stops it and therefore comes last of those that use it. The load is scripts/soak_serve.py's.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from test_deploy_support import metric

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "soak_serve.py"
spec = importlib.util.spec_from_file_location("soak_serve", SCRIPT)
soak = importlib.util.module_from_spec(spec)
sys.modules["soak_serve"] = soak  # dataclasses look their module up there
spec.loader.exec_module(soak)

MODEL = "qwen2-vl"
SHUTDOWN_TIMEOUT = 8


class Served:
    def __init__(self, process, url):
        self.process, self.url, self.base_url = process, url, url + "/v1"


@pytest.fixture(scope="module")
def never_stopping_dir(qwen2_vl_dir, tmp_path_factory):
    from swiftlite.testing.tiny import never_stopping_copy

    # Long answers that end only when their client leaves or the server stops them (the tiny model would
    # otherwise stop by itself).
    return never_stopping_copy(qwen2_vl_dir, tmp_path_factory.mktemp("never_stopping") / "qwen2-vl")


@pytest.fixture(scope="module")
def deployed(never_stopping_dir):
    model = never_stopping_dir
    # One OpenMP thread: on the shared 2-core machine, two spinning threads against the client slow every step.
    process, url = soak.start_server(str(model), "--max_new_tokens", "8", "--shutdown_timeout",
                                     str(SHUTDOWN_TIMEOUT), threads=1)
    try:
        yield Served(process, url)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        log = process.stdout.read()
        assert "Traceback" not in log, log  # no request, good or bad, may make the server log a crash


def chat(content: str, max_tokens: int, stream: bool = False) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream}


def cpu_used(pid: int, seconds: float) -> float:
    """CPU seconds the process uses during the next `seconds` of wall time."""
    before = soak.cpu_seconds(pid)
    time.sleep(seconds)
    return soak.cpu_seconds(pid) - before


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.slow
def test_mixed_load_with_malformed_requests(deployed):
    """300 requests from 16 clients, 10% malformed in four ways: every answer is the right one, memory stays put."""
    url, pid = deployed.url, deployed.process.pid
    warmup = soak.plan_requests(100, 0.1, 8, MODEL, seed=1)
    warm = soak.summarise(*soak.asyncio.run(soak.run_load(url, warmup, clients=16)))
    assert warm.server_errors == 0 and warm.good_ok == warm.good, warm.problems
    time.sleep(0.5)
    rss_warm = soak.rss_mb(pid)

    planned = soak.plan_requests(300, 0.1, 8, MODEL, seed=2)
    assert sorted({p.kind for p in planned if p.kind not in soak.GOOD_KINDS}) == sorted(soak.MALFORMED_KINDS)
    report = soak.summarise(*soak.asyncio.run(soak.run_load(url, planned, clients=16)))
    time.sleep(0.5)
    rss_after = soak.rss_mb(pid)

    assert report.requests == 300 and report.bad == 30
    assert report.good_ok == report.good == 270, report.problems  # 200, complete, with generated text
    assert report.bad_ok == report.bad, report.problems  # each its own 4xx in OpenAI's error shape
    for kind, status in soak.EXPECTED_STATUS.items():  # 30 bad requests: the kinds in turn, one or two of each
        assert report.by_status[f"{kind} {status}"] >= 30 // len(soak.EXPECTED_STATUS), report.by_status
    assert report.server_errors == 0 and report.no_answer == 0
    assert rss_after < rss_warm * 1.10, (rss_warm, rss_after)
    assert httpx.get(url + "/health").json() == {"status": "ok"}


@pytest.mark.slow
def test_disconnected_clients_leave_the_server_idle(deployed):
    """Two streams (one generating, one queued) and a non-streaming request whose client gives up: once they are
    gone the server burns no CPU, and the next request is answered at once."""
    url, pid = deployed.base_url + "/chat/completions", deployed.process.pid
    tokens_before = metric(deployed, "swiftlite_generation_tokens_total")
    cancelled_before = metric(deployed, "swiftlite_requests_cancelled_total")
    with httpx.Client(timeout=60) as first, httpx.Client(timeout=60) as second, httpx.Client(timeout=60) as third:
        with first.stream("POST", url, json=chat("tell me a long story", 3000, stream=True)) as generating, \
                second.stream("POST", url, json=chat("and another one", 3000, stream=True)) as queued:
            assert generating.status_code == queued.status_code == 200
            lines = generating.iter_lines()
            assert next(lines).startswith("data: ")  # the role chunk
            assert '"content"' in next(line for line in lines if line)  # generated text: the batch runs
            busy = cpu_used(pid, 1.0)
            with pytest.raises(httpx.ReadTimeout):  # a client that stops waiting closes its connection
                third.post(url, json=chat("a third story", 3000), timeout=httpx.Timeout(60, read=0.5))
        left = time.monotonic()  # both streams closed mid-answer

    # Idle within a few seconds: CPU over half-second windows drops to (near) nothing.
    idle_after = None
    while time.monotonic() - left < 5 and idle_after is None:
        if cpu_used(pid, 0.5) < 0.05:
            idle_after = time.monotonic() - left
    assert idle_after is not None and idle_after < 3, "the server kept computing after its clients left"
    idle = cpu_used(pid, 1.5)
    assert idle < 0.1, f"{idle:.2f} CPU s in 1.5 s with no client (while generating: {busy:.2f} s in 1 s)"
    assert busy > 5 * idle  # the measurement sees generation when there is some
    assert metric(deployed, "swiftlite_running_rows") == 0 and metric(deployed, "swiftlite_queue_length") == 0
    assert metric(deployed, "swiftlite_requests_cancelled_total") == cancelled_before + 3
    assert metric(deployed, "swiftlite_generation_tokens_total") - tokens_before < 3000  # stopped early, not finished

    started = time.monotonic()
    answer = httpx.post(url, json=chat("hello", 4), timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 4
    assert time.monotonic() - started < 3


def test_a_client_that_leaves_while_sending_its_body_is_no_server_error(deployed):
    """A client that announces 1 MB, sends 10 bytes and hangs up: logged as gone, not as an internal error."""
    import socket

    errors_before = server_errors(deployed)
    with socket.create_connection(("127.0.0.1", int(deployed.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000000\r\n\r\n{\"model\": ")
        time.sleep(0.3)  # the handler is reading the body
    time.sleep(0.5)
    assert server_errors(deployed) == errors_before
    assert httpx.post(deployed.base_url + "/chat/completions", json=chat("hello", 2), timeout=60).status_code == 200


def server_errors(deployed) -> float:
    text = httpx.get(deployed.url + "/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("swiftlite_requests_total") and 'status="5' in line)


@pytest.mark.slow
def test_sigterm_stops_accepting_finishes_in_flight_requests_and_exits_0(deployed):
    """Last in this module: it stops the shared server. A running stream and a request queued behind it both
    finish after SIGTERM; meanwhile new connections are refused; then the process exits 0, well within the bound."""
    process, url = deployed.process, deployed.base_url + "/chat/completions"
    queued_answer = {}

    def send_queued():
        queued_answer["response"] = httpx.post(url, json=chat("queued", 20), timeout=60)

    body = {**chat("a story", 300, stream=True), "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url, json=body, timeout=60) as running:
        lines = running.iter_lines()
        next(lines)
        sender = threading.Thread(target=send_queued)
        sender.start()
        # The step engine runs it beside the stream at once (the static engine would queue it): either way it waits.
        wait_for(lambda: metric(deployed, "swiftlite_queue_length") == 1
                 or metric(deployed, "swiftlite_running_rows") == 2)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # The listening socket closes at once: new connections are refused while the two requests finish.
        refused = None
        while refused is None and time.monotonic() - signalled < 3:
            try:
                httpx.get(deployed.url + "/health", timeout=1)
                time.sleep(0.05)
            except httpx.ConnectError:
                refused = time.monotonic() - signalled
            except httpx.RemoteProtocolError:  # taken from the backlog just before the socket closed, then dropped
                pass
        rest = [line for line in lines if line]
        finished = time.monotonic() - signalled
    sender.join(30)
    assert refused is not None and refused < finished, "new connections were still accepted while draining"

    assert rest[-1] == "data: [DONE]"
    usage = json.loads(rest[-2][len("data: "):])["usage"]
    reasons = [json.loads(line[len("data: "):])["choices"][0]["finish_reason"] for line in rest[:-2]]
    assert reasons[-1] == "length" and usage["completion_tokens"] == 300  # finished, not aborted
    queued = queued_answer["response"]
    assert queued.status_code == 200 and queued.json()["choices"][0]["finish_reason"] == "length"

    assert process.wait(timeout=SHUTDOWN_TIMEOUT + 10) == 0
    assert time.monotonic() - signalled < SHUTDOWN_TIMEOUT  # nothing was left to wait for: no need for the bound


def test_requests_still_queued_when_the_shutdown_bound_passes_get_a_503(never_stopping_dir):
    """Past --shutdown_timeout the running stream ends with finish_reason "abort" and [DONE]; a request still
    queued behind it was never started and gets 503 shutting_down (retryable elsewhere), not a 500."""
    from test_deploy_support import running_server

    with running_server(model=str(never_stopping_dir), max_batch_size=1) as server:
        url, engine = server.base_url + "/chat/completions", server.app.state.server.engine
        queued_answer = {}

        def send_queued():
            queued_answer["response"] = httpx.post(url, json=chat("queued", 20), timeout=60)

        with httpx.stream("POST", url, json=chat("a long story", 3000, stream=True), timeout=60) as running:
            lines = running.iter_lines()
            next(lines)
            sender = threading.Thread(target=send_queued)
            sender.start()
            wait_for(lambda: metric(server, "swiftlite_queue_length") == 1)
            engine.drain(0.5)  # what SIGTERM does in `mm deploy`, with --shutdown_timeout 0.5
            rest = [line for line in lines if line]
        sender.join(30)
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][len("data: "):])["choices"][0]["finish_reason"] == "abort"
        queued = queued_answer["response"]
        assert queued.status_code == 503 and queued.json()["error"]["code"] == "shutting_down"
