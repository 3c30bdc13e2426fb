"""Benchmark `mm deploy`: start-up time, then N concurrent streaming chat clients, per --max_batch_size.

    python scripts/bench_serve.py                     # tiny Qwen2-VL; batch sizes 1 and 16; 4 and 16 clients
    python scripts/bench_serve.py --model DIR --batch_sizes 1 32 --clients 1 8 32 --max_tokens 128
    python scripts/bench_serve.py --backend pt vllm --batch_sizes 16 --clients 16 --mixed_max_tokens
                                                      # pt against vLLM (run it in .venv-vllm: docs/deploy.md)
    python scripts/bench_serve.py --workload engines --no_image --hidden_size 256 --num_layers 4
                                                      # issue 16: --engine step vs static, one adapter vs merged

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
    parser.add_argument("--hidden_size", type=int, help="hidden size of the tiny checkpoint (default: the family's "
                        "own tiny size; larger makes the model's compute, not the server's Python, dominate)")
    parser.add_argument("--num_layers", type=int, help="layers of the tiny checkpoint (default: the family's)")
    add_engine_args(parser)
    return parser.parse_args()


# ---- issue 16: the step engine against the static one, and one adapter against the merged model ----------------
def add_engine_args(parser) -> None:
    parser.add_argument("--workload", choices=["fixed", "engines"], default="fixed",
                        help="fixed: the batch-size sweep above; engines: (1) a mixed workload (--engine_clients "
                        "streaming clients, max_tokens drawn from --mixed_tokens) on --engine static and --engine "
                        "step, (2) one LoRA adapter at batch size 1 against the merged model")
    parser.add_argument("--engine_clients", type=int, default=16, help="clients of the mixed workload")
    parser.add_argument("--mixed_tokens", type=int, nargs=2, default=[8, 256], metavar=("LOW", "HIGH"),
                        help="each request's max_tokens is drawn uniformly from LOW..HIGH (seeded per client)")
    parser.add_argument("--adapter_tokens", type=int, default=64, help="tokens per answer of the adapter runs")
    parser.add_argument("--rounds", type=int, default=2, help="the mixed workload alternates static and step this "
                        "many times; each engine's figures pool its rounds (a shared machine's load drifts)")


def start_engine_server(model_dir: str | None, extra: list[str], threads: int | None) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "swiftlite", "deploy", *(["--model", model_dir] if model_dir else []),
               "--port", str(port), "--log_level", "warning", *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    while True:
        if process.poll() is not None:
            raise SystemExit(f"mm deploy failed:\n{process.stderr.read()}")
        try:
            if httpx.get(url + "/models", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.05)


async def mixed_load(url: str, clients: int, duration: float, body: dict, low: int, high: int) -> dict:
    """Like `load`, but each request asks for its own max_tokens, drawn from low..high by a per-client seed."""
    import random

    import httpx

    results: list[tuple[float, float | None, int]] = []
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as http:
        await one_request(http, url, dict(body, max_tokens=low))  # warm-up
        deadline = time.monotonic() + duration
        started = time.monotonic()

        async def client(index: int):
            draw = random.Random(index)
            while time.monotonic() < deadline:
                results.append(await one_request(http, url, dict(body, max_tokens=draw.randint(low, high))))

        await asyncio.gather(*(client(index) for index in range(clients)))
        elapsed = time.monotonic() - started  # the last requests run past the deadline: counted in full
    return mixed_figures(clients, elapsed, results)


def mixed_figures(clients: int, elapsed: float, results: list) -> dict:
    firsts = sorted(r[1] for r in results if r[1] is not None)
    return {"clients": clients, "requests": len(results), "seconds": round(elapsed, 1),
            "output_tokens_per_s": round(sum(r[2] for r in results) / elapsed, 1),
            "ttft_p50_ms": round(1000 * statistics.median(firsts)),
            "ttft_p95_ms": round(1000 * firsts[max(0, int(0.95 * len(firsts)) - 1)]),
            "results": results, "elapsed": elapsed}


def make_adapter_and_merged(model_dir: str, out: Path) -> tuple[Path, Path]:
    """A random LoRA on the language model's q/v projections (B perturbed, so it changes outputs), and a copy of
    the checkpoint with that LoRA merged in: the same weights served the two ways."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model

    from swiftlite.models.loading import load_model, resolve_model

    resolved = resolve_model(None, model_dir)
    model = load_model(resolved.model_dir, resolved.family, torch.float32, device="cpu")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=r".*language_model.*\.(q_proj|v_proj)$"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    adapter, merged = out / "adapter", out / "merged"
    model.save_pretrained(adapter)
    # An `mm sft` checkpoint names its base model: served with --ckpt_dir, the lone adapter is merged at load.
    (adapter / "sft_args.json").write_text(json.dumps({"model_id_or_path": model_dir}))
    shutil.copytree(model_dir, merged)
    model.merge_and_unload().save_pretrained(merged)
    return adapter, merged


def run_engines(args, model_dir: str, body: dict) -> None:
    rounds = {"static": [], "step": []}
    for round_number in range(args.rounds):
        for engine in ("static", "step"):
            process, url = start_engine_server(model_dir, ["--engine", engine, "--max_batch_size",
                                                           str(args.engine_clients), "--max_new_tokens",
                                                           str(args.mixed_tokens[1])], args.threads)
            try:
                figures = asyncio.run(mixed_load(url, args.engine_clients, args.duration, body, *args.mixed_tokens))
            finally:
                process.terminate()
                process.wait(timeout=60)
            rounds[engine].append(figures)
            print(f"  round {round_number + 1} engine={engine}  " + "  ".join(
                f"{key}={value}" for key, value in figures.items() if key not in ("results", "elapsed")), flush=True)
    mixed = []
    for engine, runs in rounds.items():  # pooled: all requests of its rounds over all their seconds
        pooled = mixed_figures(args.engine_clients, sum(run["elapsed"] for run in runs),
                               [result for run in runs for result in run["results"]])
        mixed.append({"engine": engine, **{key: value for key, value in pooled.items()
                                           if key not in ("results", "elapsed")}})

    with tempfile.TemporaryDirectory() as scratch:
        adapter, merged = make_adapter_and_merged(model_dir, Path(scratch))
        configurations = (
            ("merged model", str(merged), ["--engine", "step"], None),
            ("adapter --ckpt_dir (merged at load)", None, ["--engine", "step", "--ckpt_dir", str(adapter)], None),
            ("adapter --ckpt_dir --merge_lora false, step engine", None,
             ["--engine", "step", "--ckpt_dir", str(adapter), "--merge_lora", "false"], None),
            ("adapter, step engine (switched on)", model_dir, ["--engine", "step", "--lora_modules",
                                                              f"tuned={adapter}"], "tuned"),
            ("adapter, static engine (adapter_names)", model_dir, ["--engine", "static", "--lora_modules",
                                                                  f"tuned={adapter}"], "tuned"))
        runs: dict[str, list[dict]] = {label: [] for label, *_ in configurations}
        for round_number in range(args.rounds):  # each round serves every configuration in turn
            for label, served, extra, name in configurations:
                process, url = start_engine_server(served, ["--max_batch_size", "1", *extra], args.threads)
                try:
                    request = dict(body, max_tokens=args.adapter_tokens, **({"model": name} if name else {}))
                    figures = asyncio.run(load(url, 1, args.duration, request))
                finally:
                    process.terminate()
                    process.wait(timeout=60)
                runs[label].append(figures)
                print(f"  round {round_number + 1} served={label}  " + "  ".join(
                    f"{key}={value}" for key, value in figures.items()), flush=True)
        single = []
        for label, figures in runs.items():  # pooled: all tokens of its rounds over all their seconds
            seconds = sum(run["seconds"] for run in figures)
            single.append({"served": label, "seconds": round(seconds, 1),
                           "output_tokens_per_s": round(sum(run["output_tokens_per_s"] * run["seconds"]
                                                            for run in figures) / seconds, 1),
                           "ttft_p50_ms": round(statistics.median(run["ttft_p50_ms"] for run in figures))})

    static, step = mixed
    print()
    print(f"| mixed workload, {args.engine_clients} streaming clients, max_tokens {args.mixed_tokens[0]}-"
          f"{args.mixed_tokens[1]} | requests | output tokens/s | p50 TTFT ms | p95 TTFT ms |")
    print("|---|---|---|---|---|")
    for r in mixed:
        print(f"| --engine {r['engine']} | {r['requests']} | {r['output_tokens_per_s']} | {r['ttft_p50_ms']} | "
              f"{r['ttft_p95_ms']} |")
    print(f"step/static: p95 TTFT {step['ttft_p95_ms'] / max(static['ttft_p95_ms'], 1):.2f}x (bar: <= 0.33), "
          f"output tokens/s {step['output_tokens_per_s'] / max(static['output_tokens_per_s'], 1e-9):.2f}x "
          "(bar: >= 1)")
    print()
    print("| batch size 1 | output tokens/s | p50 TTFT ms |")
    print("|---|---|---|")
    for r in single:
        print(f"| {r['served']} | {r['output_tokens_per_s']} | {r['ttft_p50_ms']} |")
    merged_speed = single[0]["output_tokens_per_s"]
    for r in single[1:]:
        print(f"{r['served']}: {r['output_tokens_per_s'] / max(merged_speed, 1e-9):.2f}x the merged model's "
              "tokens/s (bar: >= 0.90)")
    if args.json:
        Path(args.json).write_text(json.dumps({"mixed": mixed, "single_adapter": single}, indent=2))


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
        if args.hidden_size:
            sizes.update(hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size)
        if args.num_layers:
            sizes["num_layers"] = args.num_layers
        model_dir = str(build_tiny_checkpoint(args.family, Path(scratch.name) / args.family, **sizes))
        if args.workload == "engines":  # every answer runs to its max_tokens: the spread of lengths is real
            from swiftlite.testing.tiny import never_stopping_copy

            model_dir = str(never_stopping_copy(model_dir, Path(scratch.name) / "never-stopping"))
    content = [{"type": "text", "text": "describe the picture"}]
    if not args.no_image:
        content.insert(0, {"type": "image_url", "image_url": {"url": small_image_data_url()}})
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": args.max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}

    if args.workload == "engines":
        run_engines(args, model_dir, body)
        if scratch is not None:
            scratch.cleanup()
        return

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
