"""`--resume_from_checkpoint DIR`: its files checked before the model loads, each problem one line naming the file.

The Trainer reads a checkpoint's files only once training starts, after the model has loaded, and then either
fails with whatever torch raises (garbage optimizer.pt, rng_state.pth) or silently does the wrong thing: a
missing optimizer.pt starts a fresh optimizer without a word, a global_step of -5 writes `checkpoint--2`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from swiftlite.errors import UserError
from swiftlite.models.checkpoint_files import SFT_ARGS_FILE, read_sft_args
from swiftlite.models.integrity import check_adapter, check_full_weights, read_json_object


def check_resume_checkpoint(checkpoint: Path, sft_type: str, lora_rank: int | None, report=print) -> None:
    """Raise UserError for a damaged file of `checkpoint`; report (say) what resuming without it means."""
    checkpoint = Path(checkpoint)
    state = read_json_object(checkpoint / "trainer_state.json")
    step = state.get("global_step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise UserError(f"{checkpoint / 'trainer_state.json'}: global_step={step!r}: expected a whole number >= 0; "
                        "the file is damaged")
    if (checkpoint / SFT_ARGS_FILE).exists():
        read_sft_args(checkpoint)
    if (checkpoint / "training_args.bin").exists():
        check_torch_archive(checkpoint / "training_args.bin")
    if (checkpoint / "adapter_config.json").is_file():
        if sft_type != "lora":
            raise UserError(f"--resume_from_checkpoint {checkpoint}: a LoRA checkpoint, but --sft_type {sft_type}")
        check_adapter(checkpoint, expected_rank=lora_rank)
    else:
        if sft_type == "lora":
            raise UserError(f"--resume_from_checkpoint {checkpoint}: no adapter_config.json, so not a LoRA checkpoint "
                            "(pass --sft_type full to resume a full fine-tuning)")
        check_full_weights(checkpoint)
    if (checkpoint / "optimizer.pt").exists():
        check_torch_archive(checkpoint / "optimizer.pt")  # cheap (zip directory only): it may be large
    else:
        report(f"warning: {checkpoint / 'optimizer.pt'} is missing: the optimizer's moments start from zero, so "
               "the resumed run will not match an uninterrupted one")
    if (checkpoint / "scheduler.pt").exists():
        check_torch_file(checkpoint / "scheduler.pt")
    else:
        report(f"warning: {checkpoint / 'scheduler.pt'} is missing: the learning-rate schedule restarts from its "
               "first step")
    rng_files = sorted(checkpoint.glob("rng_state*.pth"))
    if not rng_files:
        report(f"warning: {checkpoint} has no rng_state.pth: dropout and shuffling will not continue as they were")
    for path in rng_files:
        check_rng_file(path)


def check_torch_archive(path: Path) -> None:
    """A file written by torch.save (a zip archive), without unpickling it."""
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a file written by torch.save (truncated or damaged)")
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                raise UserError(f"{path}: not a file written by torch.save (damaged)")
    except zipfile.BadZipFile:
        raise UserError(f"{path}: not a file written by torch.save (truncated or damaged)") from None


def check_torch_file(path: Path):
    """A small torch.save file, loaded (safely: weights only) to be sure it is whole; returns what it holds."""
    if not Path(path).is_file():
        return None
    check_torch_archive(path)
    import torch
    from transformers.trainer_pt_utils import safe_globals

    try:
        with safe_globals():  # the numpy random state the Trainer saves, allowed as the Trainer allows it
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # whatever the unpickler meets in a damaged file
        raise UserError(f"{path}: does not load ({type(error).__name__}); the file is damaged") from None


def check_rng_file(path: Path) -> None:
    state = check_torch_file(path)
    if not isinstance(state, dict) or not {"python", "numpy", "cpu"} <= set(state):
        raise UserError(f"{path}: not a random-state file of the Trainer (no python/numpy/cpu states)")
