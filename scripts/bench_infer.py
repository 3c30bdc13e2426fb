"""How fast `mm infer` starts, answers, and runs a small batch (a ~0.2M-parameter tiny LLaVA-1.5 on CPU).

Usage: python scripts/bench_infer.py [--runs 3] [--threads N]

Measures, as medians over --runs fresh processes:
- chat: seconds from `mm infer --model DIR` start to the first `<<< ` prompt, and to the first answer token
  when a question is typed at that prompt at once (the model loads in the background meanwhile);
- batch: the whole `mm infer --model DIR --val_dataset f.jsonl --max_new_tokens 32` for 20 prompts;
- the floor: plain transformers loading the same tokenizer, image processor and model, which any tool pays
  (almost all of it is importing torch and transformers).
`--threads N` sets OMP_NUM_THREADS for the measured processes (default: unset, torch's own choice).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(workdir: Path) -> tuple[Path, Path]:
    from PIL import Image, ImageDraw

    from swiftlite.testing import build_tiny_checkpoint

    model_dir = build_tiny_checkpoint("llava1_5", workdir / "llava", hidden_size=64, vision_dim=64)
    image = Image.new("RGB", (56, 56), "white")
    ImageDraw.Draw(image).ellipse((8, 8, 48, 48), fill="red")
    image.save(workdir / "red.png")
    rows = [{"query": f"<image>what is in this image {i}", "response": "a red circle", "images": ["red.png"]}
            if i % 2 == 0 else {"query": f"what shape is it {i}", "response": "a square"} for i in range(20)]
    dataset = workdir / "prompts.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return model_dir, dataset


def parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    import math

    with safe_open(str(model_dir / "model.safetensors"), "pt") as handle:
        return sum(math.prod(handle.get_slice(name).get_shape()) for name in handle.keys())


def time_command(command: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+system). On a shared machine CPU time is the steadier figure."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def time_chat(model_dir: Path, env: dict) -> tuple[float, float]:
    import pexpect

    start = time.perf_counter()
    child = pexpect.spawn(sys.executable, ["-m", "swiftlite", "infer", "--model", str(model_dir), "--max_new_tokens",
                                           "8", "--no_save_result"], env=dict(env, TERM="dumb"), encoding="utf-8",
                          timeout=120)
    child.expect_exact("<<< ")
    prompt = time.perf_counter() - start
    child.sendline("hello")
    child.expect_exact("hello")
    child.expect(r"\n(?!\[)[^\r\n]*?\S")  # the first answer text (info lines start with "[")
    first_token = time.perf_counter() - start
    child.expect_exact("-" * 50)
    child.sendline("exit")
    child.expect(pexpect.EOF)
    return prompt, first_token


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    options = parser.parse_args()
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if options.threads:
        env["OMP_NUM_THREADS"] = str(options.threads)
    with tempfile.TemporaryDirectory() as folder:
        model_dir, dataset = build(Path(folder))
        floor = [sys.executable, "-c", "import sys, transformers as t; d = sys.argv[1]; t.AutoTokenizer.from_pretrained(d); "
                 "t.AutoImageProcessor.from_pretrained(d); t.AutoModelForImageTextToText.from_pretrained(d)", str(model_dir)]
        batch = [sys.executable, "-m", "swiftlite", "infer", "--model", str(model_dir), "--val_dataset", str(dataset),
                 "--max_new_tokens", "32", "--result_dir", folder]
        time_command(floor, env)  # warm the file cache
        floors = [time_command(floor, env) for _ in range(options.runs)]
        batches = [time_command(batch, env) for _ in range(options.runs)]
        chats = [time_chat(model_dir, env) for _ in range(options.runs)]
        print(f"tiny LLaVA-1.5: {parameters(model_dir):,} parameters; CPU; OMP_NUM_THREADS={options.threads or 'unset'}; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; medians of {options.runs}")
        print(f"{'':44s} {'wall':>7s} {'CPU':>7s}")
        print(f"{'floor: plain transformers load':44s} {statistics.median(f[0] for f in floors):6.2f}s "
              f"{statistics.median(f[1] for f in floors):6.2f}s")
        print(f"{'mm infer batch, 20 prompts x 32 tokens':44s} {statistics.median(b[0] for b in batches):6.2f}s "
              f"{statistics.median(b[1] for b in batches):6.2f}s")
        print(f"{'mm infer chat: start -> first prompt':44s} {statistics.median(c[0] for c in chats):6.2f}s")
        print(f"{'mm infer chat: start -> first answer token':44s} {statistics.median(c[1] for c in chats):6.2f}s")


if __name__ == "__main__":
    main()
