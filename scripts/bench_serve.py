"""Benchmark `mm deploy`: start-up time, then N concurrent streaming chat clients, per --max_batch_size.

    python scripts/bench_serve.py                     # tiny Qwen2-VL; batch sizes 1 and 16; 4 and 16 clients
    python scripts/bench_serve.py --model DIR --batch_sizes 1 32 --clients 1 8 32 --max_tokens 128
    python scripts/bench_serve.py --backend pt vllm --batch_sizes 16 --clients 16 --mixed_max_tokens
                                                      # pt against vLLM (run it in .venv-vllm: docs/deploy.md)

For each batch size the script starts a real `mm deploy` process, measures the time from launch to the first
answered GET /v1/models, then runs each client count for --duration seconds: every client sends one streaming
chat request (with a small image) after another and records its latency, its time to the first generated text
and its output tokens (from the usage chunk). It prints requests/s, output tokens/s, p50/p95 latency and p50/p95
time to first token, and, per client count, the speed-up over the first batch size.

The tiny checkpoint has random weights, so it never stops early: every answer runs to --max_tokens and token
counts are comparable across settings (what vLLM's ignore_eos does for real models).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint directory (default: build the tiny Qwen2-VL checkpoint)")
    parser.add_argument("--family", default="qwen2-vl", help="tiny checkpoint family when --model is not given")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16], help="--max_batch_size values")
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16], help="concurrent client counts")
    parser.add_argument("--max_tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds of load per measurement")
    parser.add_argument("--no_image", action="store_true", help="send text-only requests")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the servers (CPU): on a small or shared "
                        "machine 1 avoids OpenMP threads spinning against each other")
    parser.add_argument("--backend", nargs="+", default=["pt"], choices=["pt", "vllm"],
                        help="--infer_backend of the servers; with both, the ratio vllm/pt is printed")
    parser.add_argument("--mixed_max_tokens", action="store_true", help="requests cycle through max_tokens/8, "
                        "/4, /2 and the full --max_tokens (answers of mixed lengths, as real traffic has)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def small_image_data_url() -> str:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (56, 56), (255, 255, 255))
    ImageDraw.Draw(image).ellipse((8, 8, 48, 48), fill=(220, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def start_server(model_dir: str, batch_size: int, max_tokens: int, threads: int | None,
                 backend: str = "pt") -> tuple[subprocess.Popen, str, float]:
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "swiftlite", "deploy", "--model", model_dir, "--port", str(port),
               "--max_batch_size", str(batch_size), "--max_new_tokens", str(max_tokens), "--log_level", "warning"]
    if backend == "vllm":  # eager: the tiny model gains nothing from torch.compile's minute of warm-up
        command += ["--infer_backend", "vllm", "--enforce_eager", "true", "--max_model_len", "2048"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    while True:
        if process.poll() is not None:
            raise SystemExit(f"mm deploy failed:\n{process.stderr.read()}")
        try:
            if httpx.get(url + "/models", timeout=1).status_code == 200:
                return process, url, time.monotonic() - started
        except httpx.HTTPError:
            time.sleep(0.05)


async def one_request(http, url: str, body: dict) -> tuple[float, float | None, int]:
    """(latency, time to first text, output tokens) of one streaming chat request."""
    started = time.monotonic()
    first = None
    tokens = 0
    async with http.stream("POST", url + "/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                if first is None and choice.get("delta", {}).get("content"):
                    first = time.monotonic() - started
    return time.monotonic() - started, first, tokens


async def load(url: str, clients: int, duration: float, body: dict, mixed: bool = False) -> dict:
    import httpx

    results: list[tuple[float, float | None, int]] = []
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await one_request(http, url, body)  # warm-up: first-call costs stay out of the figures
        deadline = time.monotonic() + duration
        started = time.monotonic()

        sent = 0

        async def client():
            nonlocal sent
            while time.monotonic() < deadline:
                request = body
                if mixed:  # max_tokens/8, /4, /2, /1 in turn across all clients
                    request = dict(body, max_tokens=max(1, body["max_tokens"] >> (3 - sent % 4)))
                sent += 1
                results.append(await one_request(http, url, request))

        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.monotonic() - started
    latencies = sorted(r[0] for r in results)
    firsts = sorted(r[1] for r in results if r[1] is not None)
    return {
        "clients": clients, "requests": len(results), "seconds": round(elapsed, 2),
        "requests_per_s": round(len(results) / elapsed, 2),
        "output_tokens_per_s": round(sum(r[2] for r in results) / elapsed, 1),
        "latency_p50_ms": round(1000 * statistics.median(latencies)),
        "latency_p95_ms": round(1000 * latencies[max(0, int(0.95 * len(latencies)) - 1)]),
        "ttft_p50_ms": round(1000 * statistics.median(firsts)) if firsts else None,
        "ttft_p95_ms": round(1000 * firsts[max(0, int(0.95 * len(firsts)) - 1)]) if firsts else None,
    }


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model_dir = args.model
    scratch = None
    if model_dir is None:
        from swiftlite.testing import build_tiny_checkpoint

        scratch = tempfile.TemporaryDirectory()
        # head_dim 32 (hidden 128, 2 heads) when vLLM is measured: its CPU attention takes no smaller.
        sizes = dict(hidden_size=128, num_heads=2) if "vllm" in args.backend else {}
        model_dir = str(build_tiny_checkpoint(args.family, Path(scratch.name) / args.family, **sizes))
    content = [{"type": "text", "text": "describe the picture"}]
    if not args.no_image:
        content.insert(0, {"type": "image_url", "image_url": {"url": small_image_data_url()}})
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": args.max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}

    rows = []
    for backend, batch_size in [(b, size) for b in args.backend for size in args.batch_sizes]:
        process, url, startup = start_server(model_dir, batch_size, args.max_tokens, args.threads, backend)
        try:
            print(f"--infer_backend {backend} --max_batch_size {batch_size}: ready (first /v1/models answered) "
                  f"after {startup:.1f} s", flush=True)
            for clients in args.clients:
                figures = {"backend": backend, "max_batch_size": batch_size, "startup_s": round(startup, 1),
                           **asyncio.run(load(url, clients, args.duration, body, args.mixed_max_tokens))}
                rows.append(figures)
                print("  " + "  ".join(f"{key}={value}" for key, value in figures.items()), flush=True)
        finally:
            process.terminate()
            process.wait(timeout=60)

    print()
    print("| backend | max_batch_size | clients | requests/s | output tokens/s | p50 latency ms | p95 latency ms | "
          "p50 TTFT ms | p95 TTFT ms | start-up s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['max_batch_size']} | {r['clients']} | {r['requests_per_s']} | "
              f"{r['output_tokens_per_s']} | "
              f"{r['latency_p50_ms']} | {r['latency_p95_ms']} | {r['ttft_p50_ms']} | {r['ttft_p95_ms']} | "
              f"{r['startup_s']} |")
    baseline = {r["clients"]: r for r in rows if r["max_batch_size"] == args.batch_sizes[0] and r["backend"] == "pt"}
    for r in rows:
        if r["backend"] == "vllm" and (pt := next((b for b in rows if b["backend"] == "pt" and b["clients"] ==
                                                   r["clients"] and b["max_batch_size"] == r["max_batch_size"]), None)):
            ratio = r["output_tokens_per_s"] / max(pt["output_tokens_per_s"], 1e-9)
            print(f"{r['clients']} clients, --max_batch_size {r['max_batch_size']}: vllm gives {ratio:.2f}x the "
                  "output tokens/s of pt")
        if r["backend"] == "pt" and r["max_batch_size"] != args.batch_sizes[0] and r["clients"] in baseline:
            ratio = r["output_tokens_per_s"] / max(baseline[r["clients"]]["output_tokens_per_s"], 1e-9)
            print(f"{r['clients']} clients: --max_batch_size {r['max_batch_size']} gives {ratio:.1f}x the output "
                  f"tokens/s of --max_batch_size {args.batch_sizes[0]}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if scratch is not None:
        scratch.cleanup()


if __name__ == "__main__":
    main()
