"""Processes and places: the versioned output directory, the torchrun relaunch, DeepSpeed configs.

`NPROC_PER_NODE=2 mm sft ...` runs `python -m torch.distributed.run --nproc_per_node 2 ... -m swiftlite.cli
sft <same flags>` (NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT are passed through for several machines), as
ms-swift does. The children see LOCAL_RANK and train; the Trainer (through accelerate) uses nccl on GPUs and
gloo on CPUs.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from swiftlite.errors import UserError
from swiftlite.models.checkpoint_files import SFT_ARGS_FILE, STAGING_DIR


# ---- output directory ---------------------------------------------------------------------------------
def versioned_output_dir(output_dir: str, model_type: str) -> Path:
    """Create `output/<model_type>/v<N>-<YYYYMMDD-HHMMSS>`, N one more than the highest version there.

    Two runs started at once never share a directory: creating it is the claim, and a loser takes the next N.
    """
    parent = Path(output_dir).expanduser().resolve() / model_type
    parent.mkdir(parents=True, exist_ok=True)
    versions = [int(match.group(1)) for child in parent.iterdir() if (match := re.match(r"v(\d+)-", child.name))]
    version = max(versions, default=-1) + 1
    while True:
        run_dir = parent / f"v{version}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            version += 1


AUTO_RESUME = ("true", "auto")  # --resume_from_checkpoint values that mean "find the newest checkpoint"


def is_run_dir(path: Path) -> bool:
    """A directory `mm sft` wrote a run into (its sft_args.json, or checkpoints)."""
    return (path / SFT_ARGS_FILE).is_file() or any(path.glob("checkpoint-*"))


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint-<step> directories that can be resumed, oldest step first.

    Only complete checkpoints carry that name (they are renamed into place once written); trainer_state.json
    is checked as well so that a checkpoint saved with --save_only_model, or copied by hand, is passed over.
    """
    found = [(int(match.group(1)), child) for child in run_dir.glob("checkpoint-*")
             if (match := re.fullmatch(r"checkpoint-(\d+)", child.name)) and (child / "trainer_state.json").is_file()]
    return [child for _, child in sorted(found)]


def find_resume_checkpoint(output_dir: str, model_type: str, add_output_dir_suffix: bool,
                           report=print) -> tuple[Path, bool]:
    """`--resume_from_checkpoint true|auto` -> (the newest complete checkpoint, whether to continue in its run dir).

    Where it looks: `--output_dir` itself when it is a run directory (then the run continues in place) or when
    --add_output_dir_suffix false; otherwise the run directories `<output_dir>/<model_type>/v<N>-*`, highest N
    first, taking the first that holds a complete checkpoint (a newer run killed before its first save is
    passed over, saying so). Leftovers of an interrupted save (`.staging/`) are never used, and are reported.
    """
    root = Path(output_dir).expanduser().resolve()
    in_place = is_run_dir(root)
    if in_place or not add_output_dir_suffix:
        candidates = [root]
    else:
        parent = root / model_type
        versions = [(int(match.group(1)), child) for child in (parent.iterdir() if parent.is_dir() else [])
                    if child.is_dir() and (match := re.match(r"v(\d+)-", child.name))]
        candidates = [child for _, child in sorted(versions, reverse=True)]
    for run_dir in candidates:
        leftovers = sorted(path.name for path in (run_dir / STAGING_DIR).glob("*"))
        if leftovers:
            report(f"ignoring the leftovers of an interrupted save in {run_dir / STAGING_DIR}: {', '.join(leftovers)}")
        checkpoints = complete_checkpoints(run_dir)
        if checkpoints:
            return checkpoints[-1], in_place
        if run_dir != candidates[-1]:
            report(f"{run_dir}: no complete checkpoint, looking at older runs")
    where = candidates[0] if len(candidates) == 1 else root / model_type / "v*"
    raise UserError(f"--resume_from_checkpoint true: no complete checkpoint-<step> in {where}")


def agree_on_output_dir(make_dir) -> Path:
    """Every process must write to the same directory: rank 0 decides and tells the others."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return make_dir()
    import torch
    import torch.distributed as dist
    from accelerate import PartialState

    # Initialises the process group from torchrun's environment (gloo on CPUs, nccl on GPUs); without
    # cpu=True on a CPU-only machine accelerate would see a single process.
    state = PartialState(cpu=not torch.cuda.is_available())
    chosen = [str(make_dir()) if state.is_main_process else None]
    dist.broadcast_object_list(chosen, src=0)
    return Path(chosen[0])


# ---- torchrun relaunch --------------------------------------------------------------------------------
def wants_relaunch() -> bool:
    """NPROC_PER_NODE is set and we are not already one of torchrun's children."""
    return bool(os.environ.get("NPROC_PER_NODE")) and "LOCAL_RANK" not in os.environ


def args_to_argv(args: dict) -> list[str]:
    """The flags of a run, written back as a command line (`--flag true|false`, `--list a b`)."""
    argv: list[str] = []
    for key, value in args.items():
        if value is None or (isinstance(value, list) and not value):
            continue
        if isinstance(value, bool):
            argv += [f"--{key}", "true" if value else "false"]
        elif isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def relaunch_with_torchrun(args: dict) -> int:
    nproc = os.environ["NPROC_PER_NODE"]
    if not nproc.isdigit() or int(nproc) < 1:
        raise UserError(f"NPROC_PER_NODE={nproc}: expected a positive number of processes")
    check_gpus_for_processes(int(nproc))
    nnodes = os.environ.get("NNODES", "1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", nproc, "--nnodes", nnodes,
               "--node_rank", os.environ.get("NODE_RANK", "0"),
               "--master_addr", os.environ.get("MASTER_ADDR", "127.0.0.1"),
               "--master_port", os.environ.get("MASTER_PORT") or str(_free_port()),
               "-m", "swiftlite.cli", "sft", *args_to_argv(args)]
    print(f"mm sft: running {nproc} processes per node on {nnodes} node(s): {' '.join(command[:12])} ...",
          flush=True)
    environment = dict(os.environ)
    environment.setdefault("OMP_NUM_THREADS", "1")  # each process gets a share of the cores, not all of them
    code = subprocess.call(command, env=environment)
    # torchrun killed by a signal reports -N; a shell would say 128 + N (130 for Ctrl-C). Either way non-zero,
    # so that `mm sft ... && mm export ...` stops.
    return 128 - code if code < 0 else code


def check_gpus_for_processes(nproc: int, visible: int | None = None) -> None:
    """Each process of a node trains on a GPU of its own: more processes than visible GPUs is a mistake
    (without GPUs the processes train on the CPU, over gloo)."""
    if visible is None:
        import torch

        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible and nproc > visible:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise UserError(f"NPROC_PER_NODE={nproc}: only {visible} GPU(s) visible"
                        + (f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else "")
                        + f"; use NPROC_PER_NODE={visible} or fewer")


def _free_port() -> int:
    # A fixed default (29500) collides with any other job on the machine; ask the OS for a free one.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- DeepSpeed ----------------------------------------------------------------------------------------
def deepspeed_config(value: str | None):
    """`--deepspeed default-zero2|default-zero3|<file.json>` -> what TrainingArguments(deepspeed=...) takes."""
    if not value:
        return None
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise UserError(f"--deepspeed {value}: the deepspeed package is not installed (pip install deepspeed)")
    presets = {"default-zero2": _zero(2), "default-zero3": _zero(3)}
    if value in presets:
        return presets[value]
    if not Path(value).is_file():
        raise UserError(f"--deepspeed {value}: expected default-zero2, default-zero3 or a JSON config file")
    return str(Path(value).resolve())


def _zero(stage: int) -> dict:
    # ms-swift's default configs: "auto" values are filled in by transformers from the training arguments.
    zero = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": "auto"}
    if stage == 2:
        zero.update({"allgather_partitions": True, "allgather_bucket_size": 2e8, "reduce_scatter": True})
    else:
        zero.update({"sub_group_size": 1e9, "stage3_prefetch_bucket_size": "auto",
                     "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
                     "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True})
    return {
        "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
                 "hysteresis": 2, "min_loss_scale": 1},
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "steps_per_print": 2000,
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "wall_clock_breakdown": False,
    }
