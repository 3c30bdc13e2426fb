"""Wall time and peak memory of `mm export --merge_lora true` against the size of the checkpoint.

Builds tiny LLaVA-1.5 checkpoints of growing size (real architecture, random weights), puts a LoRA adapter
(r=8 on every linear layer of the language model, saved by peft as `mm sft` saves it) beside each, and runs
the whole command in a subprocess under /usr/bin/time -v: start-up, imports, merge, writing, fsync. Reports
the median wall time and the peak RSS over --repeats runs, for the default (direct) merge and through peft.
With --baseline DIR it also runs the swiftlite of another checkout (DIR on PYTHONPATH), alternating with this
one run by run, so that a before/after comparison sees the same machine load.

    python scripts/bench_export.py --repeats 3
    python scripts/bench_export.py --repeats 3 --methods auto --baseline /path/to/other/checkout
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# name -> LLaVA-1.5 builder sizes
SIZES = {
    "tiny": dict(),
    "small": dict(hidden_size=96, num_layers=4),
    "medium": dict(hidden_size=512, num_layers=6, intermediate_size=2048),
    "large": dict(hidden_size=1024, num_layers=12, intermediate_size=4096),
}


def make_checkpoint(root: Path, sizes: dict) -> tuple[Path, int]:
    """(LoRA checkpoint dir, base parameter count)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from swiftlite.models import FAMILIES
    from swiftlite.models.loading import load_model
    from swiftlite.testing import build_tiny_checkpoint

    base_dir = build_tiny_checkpoint("llava1_5", root / "base", **sizes)
    model = load_model(base_dir, FAMILIES["llava1_5"], torch.float32, device="cpu")
    parameters = sum(p.numel() for p in model.parameters())
    targets = [name for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and name.startswith("model.language_model")]
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.02)
    ckpt_dir = root / "output" / "llava1_5" / "v0-20240101-000000" / "checkpoint-100"
    model.save_pretrained(ckpt_dir)
    (ckpt_dir / "sft_args.json").write_text(json.dumps({
        "model_type": "llava1_5", "model_id_or_path": str(base_dir), "template_type": "llava1_5",
        "system": None, "sft_type": "lora", "dtype": "fp32"}))
    return ckpt_dir, parameters


def measure(command: list[str], pythonpath: str | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one run under /usr/bin/time -v (with `pythonpath` first on PYTHONPATH)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, *filter(None, [env.get("PYTHONPATH")])])
    run = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{run.stderr[-2000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", run.stderr)
    hours, minutes, seconds = int(wall.group(1) or 0), int(wall.group(2)), float(wall.group(3))
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
    return hours * 3600 + minutes * 60 + seconds, rss_kb / 1024


def directory_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--methods", nargs="+", default=["auto", "peft"], choices=["auto", "direct", "peft"])
    parser.add_argument("--baseline", help="another checkout whose swiftlite is timed too, alternating run by run")
    args = parser.parse_args()
    codes = [("", None)] + ([(" (baseline)", str(Path(args.baseline).resolve()))] if args.baseline else [])
    mm = shutil.which("mm") or sys.exit("`mm` is not on PATH: pip install -e .")
    env_note = f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}"

    print(f"# mm export --merge_lora true ({env_note}); median of {args.repeats} runs, peak RSS = max")
    print("| checkpoint | base params | base MB | adapter MB | merge | shard size | wall s | peak RSS MB |")
    print("|---|---:|---:|---:|---|---|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for name in args.sizes:
            root = Path(tmp) / name
            ckpt_dir, parameters = make_checkpoint(root, SIZES[name])
            base_mb, adapter_mb = directory_mb(root / "base"), directory_mb(ckpt_dir)
            variants = [(method, "5GB") for method in args.methods]
            if name == "large":
                variants.append(("auto", "100MB"))
            for method, shard in variants:
                command = [mm, "export", "--ckpt_dir", str(ckpt_dir), "--merge_lora", "true", "--overwrite", "true",
                           "--merge_method", method, "--max_shard_size", shard]
                runs = {suffix: [] for suffix, _ in codes}
                for _ in range(args.repeats):
                    for suffix, pythonpath in codes:
                        runs[suffix].append(measure(command, pythonpath))
                for suffix, measured in runs.items():
                    wall = statistics.median(run[0] for run in measured)
                    rss = max(run[1] for run in measured)
                    label = ("direct" if method == "auto" else method) + suffix
                    print(f"| {name} | {parameters / 1e6:.2f}M | {base_mb:.1f} | {adapter_mb:.2f} | {label} | "
                          f"{shard} | {wall:.2f} | {rss:.0f} |", flush=True)
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
