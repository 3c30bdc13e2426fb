"""Process-wide defaults for running on a CPU, applied by `mm` before anything imports torch.

OpenMP threads that have finished their share of an operation spin (busy-wait) for the next one by default.
On a machine whose cores are shared (dataloader workers, a server's request threads, other jobs) the spinning
threads take the cores the working ones need: `mm infer` generating 640 tokens took 167 s that way and a few
seconds with OMP_WAIT_POLICY=PASSIVE (idle threads sleep), and its neighbours slowed several-fold as well.

The OpenMP runtime reads the variable once, when torch loads it, so it has to be in the environment before the
first `import torch`: `swiftlite.cli.main` calls `apply_cpu_defaults()` first thing, for every subcommand. A
value the user set is kept. On a GPU machine nothing is changed (the CPU threads there mostly wait on the GPU,
and users tune them with their own settings).
"""

from __future__ import annotations

import os
from pathlib import Path


def gpu_visible(environ=os.environ) -> bool:
    """Whether an NVIDIA or AMD GPU is visible to this process, judged without importing torch."""
    if environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/dev/nvidia0").exists() or Path("/dev/kfd").exists()


def apply_cpu_defaults(environ=os.environ) -> None:
    """OMP_WAIT_POLICY=PASSIVE on CPU-only machines unless it is set already; call before torch is imported."""
    if not gpu_visible(environ):
        environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
