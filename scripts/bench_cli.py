"""How fast `mm --help` and `mm <cmd> --help` answer (they must not import torch/transformers).

Usage: python scripts/bench_cli.py [--runs 10]
Prints the median wall time of each command over N runs, and `python -c pass` as the floor.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def median_seconds(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    runs = parser.parse_args().runs
    commands = {
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
        "mm --help": ["mm", "--help"],
        "mm sft --help": ["mm", "sft", "--help"],
        "mm infer --help": ["mm", "infer", "--help"],
        "mm deploy --help": ["mm", "deploy", "--help"],
        "mm list": ["mm", "list"],
    }
    print(f"median of {runs} runs")
    for name, command in commands.items():
        print(f"{name:28s} {median_seconds(command, runs):6.3f} s")


if __name__ == "__main__":
    main()
