"""Soak `mm deploy` under a long mixed load: every good request must succeed, every bad one get its 4xx.

    python scripts/soak_serve.py                                  # tiny Qwen2-VL; 2000 requests, 16 clients
    python scripts/soak_serve.py --requests 300 --clients 16 --malformed 0.1 --threads 1

The script builds a tiny checkpoint (swiftlite.testing) in a temporary directory unless --model names one,
starts a real `mm deploy` process on 127.0.0.1 (with --limit_mm_per_prompt image=2), sends --warmup requests
of the same mix, reads the server's RSS, then runs --requests requests from --clients concurrent clients and
reads the RSS again. The mix: chat and raw completions, streaming and not, text-only and with a small image,
short max_tokens, and `extreme_sampling` (top_p 1e-300, which once poisoned every request in its batch); one
in ten (--malformed) is bad, the kinds in turn:

    bad_image        an image_url whose data URL holds bytes that are no image          -> 400
    unknown_model    `model` names a model the server does not serve                    -> 404
    bad_json         a body that is not JSON                                            -> 400
    too_many_images  three images where the server takes two (--limit_mm_per_prompt)    -> 400
    ssrf_loopback    an image URL on loopback, spelled 127.1 / 0x7f000001 / [::ffff:..] -> 400
    poisoned_seed    seed 2**64                                                         -> 400
    poisoned_penalty repetition_penalty 1e-300                                          -> 400
    bomb             a 140 KB PNG declaring 12000x12000 pixels                          -> 400
    thin_image       a 402x2 image (aspect ratio over 200)                              -> 400
    deep_json        JSON nested 50,000 deep                                            -> 400
    huge_integer     a 5,000-digit integer literal                                      -> 400
    lone_surrogate   a lone UTF-16 surrogate in the content                             -> 400
    role_list        a message role given as a list                                     -> 400
    stop_flood       100,000 stop words                                                 -> 400
    text_plain       a cross-site "simple" POST: Content-Type text/plain                -> 415
    foreign_host     Host: evil.example (DNS rebinding)                                 -> 403
    bad_ipv6_url     an image URL with a malformed IPv6 literal (http://[::1/a.png)      -> 400
    metrics_path     a path holding `"}` and a newline (a /metrics label injection)     -> 404

Meanwhile --slow_clients connections drip, a byte at a time, their request heads (slowloris) or, half of them,
their bodies after a whole head; the server (started with --request_timeout 5) must close every one of them.
After the run /metrics must hold no injected line and no series per path (at most --max_metrics_kb).

It prints good/bad/5xx counts, responses by status, requests/s and the RSS after warm-up and after the run, and
exits 1 when any request got a 5xx, any good request failed, any bad one got other than its 4xx, a slow
connection stayed open, or the RSS grew by more than --max_growth percent. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

EXPECTED_STATUS = {
    "bad_image": 400, "unknown_model": 404, "bad_json": 400, "too_many_images": 400, "ssrf_loopback": 400,
    "poisoned_seed": 400, "poisoned_penalty": 400, "bomb": 400, "thin_image": 400, "deep_json": 400,
    "huge_integer": 400, "lone_surrogate": 400, "role_list": 400, "stop_flood": 400, "text_plain": 415,
    "foreign_host": 403, "bad_ipv6_url": 400, "metrics_path": 404,
}
MALFORMED_KINDS = tuple(EXPECTED_STATUS)
GOOD_KINDS = ("chat", "chat_image", "completion", "extreme_sampling")
SLOW_HEAD_TIMEOUT = 5  # the server's --request_timeout in the soak
IMAGE_LIMIT = 2  # --limit_mm_per_prompt image=2: too_many_images sends three


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint directory (default: build a tiny one in a temporary directory)")
    parser.add_argument("--family", default="qwen2-vl", help="tiny checkpoint family when --model is not given")
    parser.add_argument("--requests", type=int, default=2000, help="requests in the measured run")
    parser.add_argument("--warmup", type=int, default=200, help="requests of the same mix before the first RSS reading")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--malformed", type=float, default=0.1, help="share of bad requests (0 to 1)")
    parser.add_argument("--max_tokens", type=int, default=8, help="max_tokens of the good requests")
    parser.add_argument("--max_growth", type=float, default=10.0, help="most RSS growth in percent after warm-up")
    parser.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the server (CPU; 1 suits a shared machine)")
    parser.add_argument("--slow_clients", type=int, default=8,
                        help="slow connections dripping their headers (slowloris) or, half of them, their bodies")
    parser.add_argument("--max_metrics_kb", type=float, default=16.0, help="largest /metrics after the run, in KB")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    return parser.parse_args(argv)


# ---- the server ------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_dir: str, *extra: str, threads: int | None = None,
                 timeout: float = 240) -> tuple[subprocess.Popen, str]:
    """Start `mm deploy` on a free port of 127.0.0.1; return the process and its base URL once /v1/models answers."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "swiftlite", "deploy", "--model", model_dir, "--host", "127.0.0.1",
               "--port", str(port), "--limit_mm_per_prompt", f"image={IMAGE_LIMIT}", "--log_level", "warning",
               "--request_timeout", str(SLOW_HEAD_TIMEOUT), *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mm deploy exited with {process.returncode}:\n{process.stdout.read()}")
        try:
            if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("mm deploy did not answer GET /v1/models in time")


def rss_mb(pid: int) -> float:
    """The process's resident memory (VmRSS in /proc/PID/status) in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- the requests ----------------------------------------------------------------------------------------
def bomb_png(width: int = 12000, height: int = 12000) -> bytes:
    """A valid grey PNG declaring width x height pixels, about 140 KB for 12000x12000."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor, row = zlib.compressobj(9), b"\0" + b"\x80" * width
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def thin_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (402, 2), (255, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_data_url(size: int = 56, payload: bytes | None = None) -> str:
    if payload is None:
        from PIL import Image, ImageDraw

        image = Image.new("RGB", (size, size), (255, 255, 255))
        ImageDraw.Draw(image).ellipse((8, 8, size - 8, size - 8), fill=(220, 30, 30))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        payload = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(payload).decode()


@dataclass
class Planned:
    kind: str  # one of GOOD_KINDS or MALFORMED_KINDS
    path: str  # /v1/chat/completions or /v1/completions
    stream: bool
    body: bytes
    headers: dict = field(default_factory=dict)  # besides Content-Type: application/json


def plan_requests(count: int, malformed: float, max_tokens: int, model: str, seed: int) -> list[Planned]:
    """`count` requests: exactly round(count * malformed) bad ones (the four kinds in turn), shuffled."""
    rng = random.Random(seed)
    image = image_data_url()
    not_an_image = image_data_url(payload=b"this is not an image, only text")
    bomb, thin = image_data_url(payload=bomb_png()), image_data_url(payload=thin_png())
    loopback = ["http://127.1:9/a.png", "http://0x7f000001:9/a.png", "http://[::ffff:127.0.0.1]:9/a.png",
                "http://2130706433/a.png", "http://u:p@127.0.0.1:9/a.png"]
    bad = round(count * malformed)
    kinds = [MALFORMED_KINDS[i % len(MALFORMED_KINDS)] for i in range(bad)]
    kinds += [GOOD_KINDS[i % len(GOOD_KINDS)] for i in range(count - bad)]
    rng.shuffle(kinds)
    planned = []
    for index, kind in enumerate(kinds):
        stream = rng.random() < 0.5
        question = f"request {index}: describe the picture in a few words"
        parts = [{"type": "text", "text": question}]
        body: dict = {"model": model, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
        path = "/v1/chat/completions"
        if kind == "completion":
            path = "/v1/completions"
            body["prompt"] = f"request {index}: once upon a time"
        elif kind in ("chat_image", "bad_image", "too_many_images", "ssrf_loopback", "bomb", "thin_image",
                      "bad_ipv6_url"):
            url = {"bad_image": not_an_image, "bomb": bomb, "thin_image": thin, "bad_ipv6_url": "http://[::1/a.png",
                   "ssrf_loopback": loopback[index % len(loopback)]}.get(kind, image)
            copies = IMAGE_LIMIT + 1 if kind == "too_many_images" else 1
            parts += [{"type": "image_url", "image_url": {"url": url}}] * copies
            body["messages"] = [{"role": "user", "content": parts}]
        else:
            body["messages"] = [{"role": "user", "content": question}]
        headers = {}
        if kind == "unknown_model":
            body["model"] = "no-such-model"
        elif kind == "extreme_sampling":
            body.update(temperature=1.0, top_p=1e-300, seed=index)
        elif kind == "poisoned_seed":
            body.update(temperature=1.0, seed=2**64)
        elif kind == "poisoned_penalty":
            body.update(temperature=1.0, repetition_penalty=1e-300)
        elif kind == "role_list":
            body["messages"][0]["role"] = ["user"]
        elif kind == "stop_flood":
            body["stop"] = [f"w{i}" for i in range(100_000)]
        elif kind == "lone_surrogate":
            body["messages"][0]["content"] = "LONE_SURROGATE " + question
        elif kind == "text_plain":
            headers["content-type"] = "text/plain"
        elif kind == "foreign_host":
            headers["host"] = "evil.example"
        elif kind == "metrics_path":
            path = f"/v1/x{index}%22%7D%0Aswiftlite_injected_total%201%0A"  # a new path each time
        raw = json.dumps(body).encode()
        if kind == "bad_json":
            raw = raw[: len(raw) // 2]  # cut mid-way: not JSON any more
        elif kind == "deep_json":
            raw = raw[:-1] + b', "metadata": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        elif kind == "huge_integer":
            raw = raw[:-1] + b', "max_completion_tokens": ' + b"7" * 5000 + b"}"
        elif kind == "lone_surrogate":
            raw = raw.replace(b"LONE_SURROGATE", b"\\ud800")  # json.dumps would not write one
        planned.append(Planned(kind, path, stream, raw, headers))
    return planned


@dataclass
class Outcome:
    kind: str
    status: int | None  # None: no HTTP answer (connection error, timeout)
    ok: bool  # the answer is what this kind should get
    problem: str = ""
    seconds: float = 0.0


async def send(http, url: str, planned: Planned) -> Outcome:
    """Send one request; judge its answer: a good one must be a complete 200, a bad one its 4xx in OpenAI's shape."""
    started = time.monotonic()
    good = planned.kind in GOOD_KINDS
    try:
        async with http.stream("POST", url + planned.path, content=planned.body,
                               headers={"content-type": "application/json", **planned.headers}) as response:
            raw = await response.aread()
            status = response.status_code
    except Exception as error:  # the server dropped us or hung: the soak's failure, reported not raised
        return Outcome(planned.kind, None, False, f"{type(error).__name__}: {error}", time.monotonic() - started)
    seconds = time.monotonic() - started
    text = raw.decode("utf-8", "replace")
    if not good:
        expected = EXPECTED_STATUS[planned.kind]
        try:
            shaped = "message" in json.loads(text)["error"]
        except (ValueError, KeyError, TypeError):
            shaped = False
        ok = status == expected and shaped
        return Outcome(planned.kind, status, ok, "" if ok else f"expected {expected}, got {status}: {text[:200]}",
                       seconds)
    if status != 200:
        return Outcome(planned.kind, status, False, f"expected 200, got {status}: {text[:200]}", seconds)
    problem = check_answer(text, planned.stream, planned.path.endswith("chat/completions"))
    return Outcome(planned.kind, status, not problem, problem, seconds)


def check_answer(text: str, stream: bool, chat: bool) -> str:
    """'' when the 200 body is a complete answer with generated text; else what is wrong with it."""
    pieces, finish = [], None
    try:
        if stream:
            events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
            if not events or events[-1] != "[DONE]":
                return f"stream did not end with [DONE]: {text[-200:]!r}"
            for event in events[:-1]:
                chunk = json.loads(event)
                if "error" in chunk:
                    return f"error event in the stream: {event[:200]}"
                for choice in chunk["choices"]:
                    pieces.append(choice["delta"].get("content") or "" if chat else choice["text"])
                    finish = choice.get("finish_reason") or finish
        else:
            choice = json.loads(text)["choices"][0]
            pieces.append(choice["message"]["content"] if chat else choice["text"])
            finish = choice["finish_reason"]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        return f"malformed answer ({type(error).__name__}: {error}): {text[:200]!r}"
    if finish not in ("stop", "length"):
        return f"finish_reason {finish!r}"
    if not "".join(pieces):
        return "no generated text"
    return ""


async def run_load(url: str, planned: list[Planned], clients: int, timeout: float = 120) -> tuple[list[Outcome], float]:
    """Send every planned request from `clients` concurrent clients (each one at a time); (outcomes, seconds)."""
    import httpx

    queue = collections.deque(planned)
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:

        async def client():
            while queue:  # bounded: each pass takes one planned request
                outcomes.append(await send(http, url, queue.popleft()))

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        return outcomes, time.monotonic() - started


def slow_clients(port: int, count: int, stop):
    """`count` connections that each send, one byte every half second, a request head (slowloris; even
    connections) or a body after a whole head (odd ones), in threads; returns (closed, threads): closed[i] tells,
    once the threads end, whether the server gave up on connection i (it must: --request_timeout)."""
    import threading

    closed = [False] * count
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" * 50
    whole_head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n")

    def drip(index: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(0.5)
            dripped = head
            if index % 2:
                sock.sendall(whole_head)
                dripped = b"{" + b" " * 99_999
            for byte in dripped:
                if stop.is_set():
                    return
                try:
                    sock.sendall(bytes([byte]))
                    sock.recv(4096)  # the server speaks only to give up: its 408, or b"" at the close
                    closed[index] = True
                    return
                except socket.timeout:
                    continue  # nothing from the server yet: drip on
                except OSError:  # reset or broken pipe: closed by the server
                    closed[index] = True
                    return

    threads = [threading.Thread(target=drip, args=(index,), daemon=True) for index in range(count)]
    for thread in threads:
        thread.start()
    return closed, threads


@dataclass
class Report:
    requests: int
    seconds: float
    good: int
    good_ok: int
    bad: int
    bad_ok: int
    server_errors: int  # 5xx
    no_answer: int
    by_status: dict = field(default_factory=dict)  # "kind status" -> count
    problems: list = field(default_factory=list)  # the first few

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def summarise(outcomes: list[Outcome], seconds: float) -> Report:
    by_status = collections.Counter(f"{o.kind} {o.status if o.status is not None else 'no answer'}" for o in outcomes)
    good = [o for o in outcomes if o.kind in GOOD_KINDS]
    bad = [o for o in outcomes if o.kind not in GOOD_KINDS]
    return Report(
        requests=len(outcomes), seconds=seconds, good=len(good), good_ok=sum(o.ok for o in good), bad=len(bad),
        bad_ok=sum(o.ok for o in bad), server_errors=sum(o.status is not None and o.status >= 500 for o in outcomes),
        no_answer=sum(o.status is None for o in outcomes), by_status=dict(sorted(by_status.items())),
        problems=[f"{o.kind}: {o.problem}" for o in outcomes if not o.ok][:10],
    )


# ---- main ------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        model_dir = args.model
        if model_dir is None:
            from swiftlite.testing import build_tiny_checkpoint

            model_dir = str(build_tiny_checkpoint(args.family, os.path.join(scratch, args.family)))
        process, url = start_server(model_dir, "--max_new_tokens", str(args.max_tokens), threads=args.threads)
        try:
            import httpx

            model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
            warmup = plan_requests(args.warmup, args.malformed, args.max_tokens, model, args.seed + 1)
            warm_report = summarise(*asyncio.run(run_load(url, warmup, args.clients)))
            time.sleep(1.0)  # let the last responses' buffers go before reading the memory
            rss_warm = rss_mb(process.pid)
            planned = plan_requests(args.requests, args.malformed, args.max_tokens, model, args.seed)
            import threading

            stop = threading.Event()
            slow_closed, slow_threads = slow_clients(int(url.rsplit(":", 1)[1]), args.slow_clients, stop)
            report = summarise(*asyncio.run(run_load(url, planned, args.clients)))
            time.sleep(max(1.0, SLOW_HEAD_TIMEOUT + 2 - report.seconds))  # the slow heads' deadline has passed
            stop.set()
            for thread in slow_threads:
                thread.join(5)
            rss_after = rss_mb(process.pid)
            metrics = httpx.get(url + "/metrics").text
        finally:
            process.terminate()
            try:
                exit_code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                exit_code = process.wait()
        server_log = process.stdout.read()

    growth = 100 * (rss_after - rss_warm) / rss_warm
    print(f"mm deploy --model {model_dir} --limit_mm_per_prompt image={IMAGE_LIMIT}: {args.requests} requests "
          f"(+{args.warmup} warm-up), {args.clients} clients, {args.malformed:.0%} malformed, "
          f"max_tokens {args.max_tokens}")
    print(f"good: {report.good_ok}/{report.good} succeeded   bad: {report.bad_ok}/{report.bad} got their 4xx   "
          f"5xx: {report.server_errors}   no answer: {report.no_answer}")
    print("responses by kind and status: " + ", ".join(f"{key}: {n}" for key, n in report.by_status.items()))
    print(f"throughput: {report.requests_per_second:.1f} requests/s ({report.seconds:.1f} s)")
    print(f"server RSS: {rss_warm:.1f} MB after warm-up, {rss_after:.1f} MB after the run ({growth:+.1f}%)")
    print(f"slow clients (slow heads and bodies) given up by the server: {sum(slow_closed)}/{len(slow_closed)}")
    injected = "swiftlite_injected_total" in metrics or "/v1/x" in metrics
    print(f"/metrics after the run: {len(metrics) / 1024:.1f} KB, "
          f"{'INJECTED LINES' if injected else 'no injected line'}")
    print(f"SIGTERM: exit code {exit_code}")
    for problem in warm_report.problems + report.problems:
        print("  problem:", problem)
    if "Traceback" in server_log:
        print("server log holds a traceback:\n" + server_log[-3000:])
    if args.json:
        with open(args.json, "w") as out:
            json.dump({**report.__dict__, "requests_per_second": report.requests_per_second, "rss_warm_mb": rss_warm,
                       "rss_after_mb": rss_after, "rss_growth_percent": growth, "exit_code": exit_code,
                       "slow_clients_closed": sum(slow_closed), "slow_clients": len(slow_closed),
                       "metrics_kb": len(metrics) / 1024, "metrics_injected": injected}, out, indent=2)

    failed = (report.server_errors or report.no_answer or report.good_ok < report.good or report.bad_ok < report.bad
              or warm_report.server_errors or warm_report.good_ok < warm_report.good
              or warm_report.bad_ok < warm_report.bad or growth > args.max_growth or exit_code != 0
              or not all(slow_closed) or injected or len(metrics) > args.max_metrics_kb * 1024
              or "Traceback" in server_log)
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
