"""Soak `mm deploy` under a long mixed load: every good request must succeed, every bad one get its 4xx.

    python scripts/soak_serve.py                                  # tiny Qwen2-VL; 2000 requests, 16 clients
    python scripts/soak_serve.py --requests 300 --clients 16 --malformed 0.1 --threads 1

The script builds a tiny checkpoint (swiftlite.testing) in a temporary directory unless --model names one,
starts a real `mm deploy` process on 127.0.0.1 (with --limit_mm_per_prompt image=2), sends --warmup requests
of the same mix, reads the server's RSS, then runs --requests requests from --clients concurrent clients and
reads the RSS again. The mix: chat and raw completions, streaming and not, text-only and with a small image,
short max_tokens; one in ten (--malformed) is bad in one of four ways:

    bad_image        an image_url whose data URL holds bytes that are no image          -> 400
    unknown_model    `model` names a model the server does not serve                    -> 404
    bad_json         a body that is not JSON                                            -> 400
    too_many_images  three images where the server takes two (--limit_mm_per_prompt)    -> 400

It prints good/bad/5xx counts, responses by status, requests/s and the RSS after warm-up and after the run, and
exits 1 when any request got a 5xx, any good request failed, any bad one got other than its 4xx, or the RSS
grew by more than --max_growth percent. Traffic goes to 127.0.0.1 only.
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

MALFORMED_KINDS = ("bad_image", "unknown_model", "bad_json", "too_many_images")
EXPECTED_STATUS = {"bad_image": 400, "unknown_model": 404, "bad_json": 400, "too_many_images": 400}
GOOD_KINDS = ("chat", "chat_image", "completion")
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
               "--port", str(port), "--limit_mm_per_prompt", f"image={IMAGE_LIMIT}", "--log_level", "warning", *extra]
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


def plan_requests(count: int, malformed: float, max_tokens: int, model: str, seed: int) -> list[Planned]:
    """`count` requests: exactly round(count * malformed) bad ones (the four kinds in turn), shuffled."""
    rng = random.Random(seed)
    image = image_data_url()
    not_an_image = image_data_url(payload=b"this is not an image, only text")
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
        elif kind in ("chat_image", "bad_image", "too_many_images"):
            url = not_an_image if kind == "bad_image" else image
            copies = IMAGE_LIMIT + 1 if kind == "too_many_images" else 1
            parts += [{"type": "image_url", "image_url": {"url": url}}] * copies
            body["messages"] = [{"role": "user", "content": parts}]
        else:
            body["messages"] = [{"role": "user", "content": question}]
        if kind == "unknown_model":
            body["model"] = "no-such-model"
        raw = json.dumps(body).encode()
        if kind == "bad_json":
            raw = raw[: len(raw) // 2]  # cut mid-way: not JSON any more
        planned.append(Planned(kind, path, stream, raw))
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
                               headers={"content-type": "application/json"}) as response:
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
            report = summarise(*asyncio.run(run_load(url, planned, args.clients)))
            time.sleep(1.0)
            rss_after = rss_mb(process.pid)
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
    print(f"SIGTERM: exit code {exit_code}")
    for problem in warm_report.problems + report.problems:
        print("  problem:", problem)
    if "Traceback" in server_log:
        print("server log holds a traceback:\n" + server_log[-3000:])
    if args.json:
        with open(args.json, "w") as out:
            json.dump({**report.__dict__, "requests_per_second": report.requests_per_second, "rss_warm_mb": rss_warm,
                       "rss_after_mb": rss_after, "rss_growth_percent": growth, "exit_code": exit_code}, out, indent=2)

    failed = (report.server_errors or report.no_answer or report.good_ok < report.good or report.bad_ok < report.bad
              or warm_report.server_errors or warm_report.good_ok < warm_report.good
              or warm_report.bad_ok < warm_report.bad or growth > args.max_growth or exit_code != 0
              or "Traceback" in server_log)
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
