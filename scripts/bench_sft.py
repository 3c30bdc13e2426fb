"""Benchmark `mm sft` as a user runs it: the whole command, in a fresh process, on CPU.

Two checkpoints (random weights, real architecture, built with swiftlite.testing):
- tiny: the test-suite LLaVA-1.5 (~0.1M parameters), where start-up and overheads dominate;
- larger: LLaVA-1.5 with hidden 512, 8 layers (~50M parameters), where compute dominates.
Each runs 30 LoRA steps at batch size 2 (gradient accumulation 1) on 60 rows with one image each, with
every other flag at its default (so a 1% held-out split is evaluated and a checkpoint is saved at the end).
On a shared machine wall times swing with the load; CPU time (user + system of the command and its dataloader
worker) is the steadier figure.

Printed per configuration (median of --repeat runs): whole-command wall time, time to the first training
step (imports, data, model), samples/s and tokens/s over the training loop, the share of the loop spent
waiting for data (after the first batch; the first batch's wait, which includes starting the dataloader
worker, is shown on its own), the seconds spent encoding rows, and the peak RSS of the largest process.

    python scripts/bench_sft.py [--repeat 3] [--only tiny|larger] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "tiny": {},
    "larger": {"hidden_size": 512, "num_layers": 8, "intermediate_size": 2816, "vision_dim": 128,
               "vision_layers": 2},
}


def build_dataset(folder: Path, count: int = 60) -> Path:
    from PIL import Image, ImageDraw

    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    rng = random.Random(0)
    lines = []
    for index in range(count):
        colour = list(colours)[index % 3]
        image = Image.new("RGB", (56, 56), (255, 255, 255))
        x, y, size = rng.randint(0, 18), rng.randint(0, 18), rng.randint(22, 36)
        ImageDraw.Draw(image).ellipse((x, y, x + size, y + size), fill=colours[colour])
        image.save(folder / f"{index}.png")
        lines.append(json.dumps({"messages": [{"role": "user", "content": "<image>what colour is it"},
                                              {"role": "assistant", "content": f"a {colour} circle"}],
                                 "images": [f"{index}.png"]}))
    path = folder / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def parameter_count(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():
                total += _product(handle.get_slice(key).get_shape())
    return total


def _product(shape) -> int:
    result = 1
    for size in shape:
        result *= size
    return result


def run_once(model_dir: Path, dataset: Path, output_dir: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "swiftlite.cli", "sft", "--model", str(model_dir), "--dataset", str(dataset),
               "--max_steps", "30", "--batch_size", "2", "--gradient_accumulation_steps", "1",
               "--output_dir", str(output_dir), *extra]
    environment = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    first_step = None
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=environment)
    buffer = b""
    while True:
        chunk = process.stderr.read1(4096) if hasattr(process.stderr, "read1") else process.stderr.read(4096)
        if not chunk:
            break
        buffer += chunk
        if first_step is None and b"1/30 [" in buffer:
            first_step = time.perf_counter() - started
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"mm sft failed:\n{buffer.decode(errors='replace')[-3000:]}")
    run_dir = sorted(output_dir.glob("*/v*"))[-1]
    summary = json.loads((run_dir / "logging.jsonl").read_text().splitlines()[-1])
    # wait4's usage covers the child and its reaped descendants (dataloader workers): CPU times are summed,
    # ru_maxrss (kilobytes on Linux) is the largest single process.
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "to_first_step_s": first_step or float("nan"),
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "samples_per_s": summary["train_samples_per_second"], "tokens_per_s": summary["train_tokens_per_second"],
            "data_share": summary["data_time_share"], "first_batch_wait_s": summary["first_batch_wait_seconds"],
            "encode_s": summary["data_prepare_seconds"], "train_loop_s": summary["train_runtime"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=sorted(CONFIGS))
    parser.add_argument("--workers", type=int, default=None, help="--dataloader_num_workers (default: mm's own)")
    parser.add_argument("--extra", default="", help="more mm sft flags, e.g. '--lazy_tokenize false'")
    options = parser.parse_args()
    extra = options.extra.split()
    if options.workers is not None:
        extra += ["--dataloader_num_workers", str(options.workers)]

    from swiftlite.testing import build_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="bench_sft_") as root:
        root = Path(root)
        dataset = build_dataset(Path(tempfile.mkdtemp(dir=root)))
        for name, sizes in CONFIGS.items():
            if options.only and name != options.only:
                continue
            model_dir = build_tiny_checkpoint("llava1_5", root / name, **sizes)
            runs = [run_once(model_dir, dataset, root / f"out-{name}-{i}", extra) for i in range(options.repeat)]
            median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            print(f"\n{name}: LLaVA-1.5 {parameter_count(model_dir) / 1e6:.2f}M parameters, 30 LoRA steps, batch 2, "
                  f"{options.repeat} runs (median), load average {os.getloadavg()[0]:.1f}, "
                  f"flags: {' '.join(extra) or '-'}")
            each = ", ".join("%.2f" % run["wall_s"] for run in runs)
            print(f"  whole command      {median['wall_s']:6.2f} s   (runs: {each})")
            print(f"  CPU time           {median['cpu_s']:6.2f} s   (user + system, command and dataloader worker)")
            print(f"  to first step      {median['to_first_step_s']:6.2f} s   (imports, data, model)")
            print(f"  training loop      {median['train_loop_s']:6.2f} s   {median['samples_per_s']:.1f} samples/s, "
                  f"{median['tokens_per_s']:.0f} tokens/s")
            print(f"  data wait          {100 * median['data_share']:6.1f} %   of loop time after the first batch "
                  f"(first batch waited {median['first_batch_wait_s']:.2f} s; "
                  f"encoding took {median['encode_s']:.2f} s in all)")
            print(f"  peak RSS           {median['peak_rss_mb']:6.0f} MB")


if __name__ == "__main__":
    main()
