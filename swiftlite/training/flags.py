"""The flags of `mm sft`, typed and grouped by concern, built once in the command function and passed down.

The groups follow the sections of `swiftlite.sft.sft`'s signature (which owns the defaults and the --help text),
field for field and in the same order, so `SftFlags.as_dict()` is the flat mapping that sft_args.json records and
that the torchrun relaunch writes back as a command line. The groups are frozen: a value decided later (the
default learning rate, a checkpoint found by `--resume_from_checkpoint true`) makes a new SftFlags with `replace`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from swiftlite.options import flag_groups


@dataclass(frozen=True)
class ModelFlags:
    model_type: str | None
    model: str | None
    model_revision: str | None
    use_hf: bool | None
    template_type: str | None
    system: str | None
    dtype: str
    max_pixels: int | None
    attn_impl: str | None
    pure_bf16: bool
    quant_bits: int | None


@dataclass(frozen=True)
class DataFlags:
    dataset: list[str] | None
    val_dataset: list[str] | None
    dataset_test_ratio: float
    max_length: int
    truncation_strategy: str
    strict: bool
    lazy_tokenize: bool
    dataloader_num_workers: int
    packing: bool


@dataclass(frozen=True)
class TunerFlags:
    """What trains: LoRA or full fine-tuning, which parts, at which learning rates."""
    sft_type: str
    lora_target_modules: list[str] | None
    lora_rank: int
    lora_alpha: int
    lora_dropout: float
    freeze_vit: bool
    freeze_aligner: bool
    vit_lr: float | None
    aligner_lr: float | None


@dataclass(frozen=True)
class OptimFlags:
    num_train_epochs: float
    max_steps: int
    batch_size: int
    eval_batch_size: int | None
    gradient_accumulation_steps: int | None
    learning_rate: float | None
    weight_decay: float
    warmup_ratio: float
    warmup_steps: int
    lr_scheduler_type: str
    max_grad_norm: float
    gradient_checkpointing: bool
    seed: int


@dataclass(frozen=True)
class OutputFlags:
    """Saving and logging: the run directory, checkpoints, resuming, trackers."""
    output_dir: str
    add_output_dir_suffix: bool
    save_steps: int | None
    eval_steps: int
    logging_steps: int
    save_total_limit: int
    save_only_model: bool
    resume_from_checkpoint: str | None
    report_to: list[str] | None


@dataclass(frozen=True)
class DistributedFlags:
    deepspeed: str | None
    fsdp: str | None
    fsdp_config: str | None


@dataclass(frozen=True)
class SftFlags:
    model: ModelFlags
    data: DataFlags
    tuner: TunerFlags
    optim: OptimFlags
    output: OutputFlags
    distributed: DistributedFlags

    @classmethod
    def from_dict(cls, values: dict) -> SftFlags:
        """From the flat mapping of every flag (the parameters of `mm sft`), each flag exactly once."""
        return flag_groups(cls, values, "mm sft")

    def as_dict(self) -> dict:
        """Every flag by name, in the order of `mm sft`'s signature."""
        return {name: value for group in dataclasses.fields(self)
                for name, value in dataclasses.asdict(getattr(self, group.name)).items()}

    def replace(self, **changes) -> SftFlags:
        """A copy with the flags named in `changes` set, each in its own group."""
        groups = {}
        for group in dataclasses.fields(self):
            current = getattr(self, group.name)
            mine = {name: value for name, value in changes.items()
                    if name in {field.name for field in dataclasses.fields(current)}}
            groups[group.name] = dataclasses.replace(current, **mine) if mine else current
        unknown = set(changes) - {name for name in self.as_dict()}
        if unknown:
            raise TypeError(f"SftFlags.replace: no flag {sorted(unknown)}")
        return SftFlags(**groups)

