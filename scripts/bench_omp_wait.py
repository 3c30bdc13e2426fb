"""What OMP_WAIT_POLICY does to `mm infer` on a shared CPU: the same batch under each policy, next to a
competing process that keeps one core busy (as other jobs, dataloader workers or a server's threads do).

Usage: python scripts/bench_omp_wait.py [--runs 2] [--tokens 32]

Policies: PASSIVE (what every `mm` command sets on a CPU-only machine since issue 19), the OpenMP runtime's
own default (spin ~300k iterations, then sleep; reproduced by an empty OMP_WAIT_POLICY, which `mm` leaves
alone and libgomp ignores), and ACTIVE (spin until the next task). Torch uses every core (no OMP_NUM_THREADS).
The batch is bench_infer.py's: 20 prompts of the tiny LLaVA-1.5, --max_new_tokens 32. Medians of --runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_infer import build, time_command  # noqa: E402

# A neighbour that keeps one core busy for as long as the benchmark runs.
NEIGHBOUR = "import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\nwhile True:\n    a = (a @ a).tanh()\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    options = parser.parse_args()
    base = {key: value for key, value in os.environ.items() if not key.startswith(("OMP_", "GOMP_"))}
    base.update(TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="")
    with tempfile.TemporaryDirectory() as folder:
        model_dir, dataset = build(Path(folder))
        batch = [sys.executable, "-m", "swiftlite", "infer", "--model", str(model_dir), "--val_dataset", str(dataset),
                 "--max_new_tokens", str(options.tokens), "--result_dir", folder]
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env=dict(base, OMP_NUM_THREADS="1"))
        try:
            results = {}
            for label, policy in (("PASSIVE (mm's default)", "PASSIVE"), ("OpenMP default (spin, then sleep)", ""),
                                  ("ACTIVE (spin)", "ACTIVE")):
                runs = [time_command(batch, dict(base, OMP_WAIT_POLICY=policy)) for _ in range(options.runs)]
                results[label] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        finally:
            neighbour.kill()
    print(f"mm infer, 20 prompts x {options.tokens} tokens, tiny LLaVA-1.5, {os.cpu_count()} cores, one busy "
          f"neighbour process; load average {os.getloadavg()[0]:.1f}; medians of {options.runs}")
    print(f"{'OMP_WAIT_POLICY':36s} {'wall':>7s} {'CPU':>7s}")
    for label, (wall, cpu) in results.items():
        print(f"{label:36s} {wall:6.2f}s {cpu:6.2f}s")


if __name__ == "__main__":
    main()
