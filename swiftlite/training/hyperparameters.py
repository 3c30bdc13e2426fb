"""Numbers that would train into NaN or nonsense fail here, in one line naming the flag, before the model loads.

typer reads `--learning_rate inf` and `--weight_decay nan` as floats without complaint, and the Trainer runs
with them: every weight turns NaN while the logged loss looks normal (the Trainer filters NaN losses out of
its logs). So every float flag must be finite, and each must lie in the range where training means something.
"""

from __future__ import annotations

import math

from swiftlite.errors import UserError

# flag -> (lowest allowed, whether the lowest itself is allowed, highest allowed or None, what it is)
RANGES = {
    "learning_rate": (0.0, False, None, "a positive number, e.g. 1e-4"),
    "vit_lr": (0.0, False, None, "a positive learning rate"),
    "aligner_lr": (0.0, False, None, "a positive learning rate"),
    "weight_decay": (0.0, True, None, "a number >= 0, e.g. 0.1"),
    "max_grad_norm": (0.0, True, None, "a number >= 0 (0: no clipping)"),
    "lora_dropout": (0.0, True, 1.0, "a number in [0, 1)"),
    "warmup_ratio": (0.0, True, 1.0, "a number in [0, 1)"),
    # (else TrainingArguments refuses a negative one, after the dataset has been read)
    "warmup_steps": (0, True, None, "a number of steps >= 0"),
    "dataset_test_ratio": (0.0, True, 1.0, "a number in [0, 1)"),
    "num_train_epochs": (0.0, False, None, "a positive number"),
    "lora_alpha": (0.0, False, None, "a positive number"),
}


def check_hyperparameters(args: dict) -> None:
    """Raise UserError for the first float flag of `args` (the flags of `mm sft`) that is not finite or out of range."""
    for name, (low, low_allowed, high, expected) in RANGES.items():
        value = args.get(name)
        if value is None or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)):
            raise UserError(f"--{name} {value!r}: expected {expected}")
        if not math.isfinite(value):
            raise UserError(f"--{name} {value}: must be a finite number ({expected}); training would only produce NaN")
        if value < low or (value == low and not low_allowed) or (high is not None and value >= high):
            raise UserError(f"--{name} {value}: expected {expected}")
    seed = args.get("seed")
    if isinstance(seed, int) and not 0 <= seed < 2 ** 32:  # NumPy's seed range; torch's and Python's are wider
        raise UserError(f"--seed {seed}: expected a whole number in [0, 2**32)")
