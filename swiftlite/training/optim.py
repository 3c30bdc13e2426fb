"""Per-part learning rates (`--vit_lr`, `--aligner_lr`, as ms-swift): AdamW parameter groups by model part.

The parts are the family registry's module prefixes (vision tower, aligner); everything else trains at
--learning_rate. Each part is split again into weight-decayed and not-decayed parameters, as the Trainer
does. The learning-rate schedule scales every group's rate by the same factor, so the ratios hold throughout.
"""

from __future__ import annotations

from swiftlite.errors import UserError

# peft's wrapper adds this to every parameter name; the registry's prefixes name the bare model's modules.
_PEFT_PREFIX = "base_model.model."


def part_learning_rates(family, vit_lr: float | None, aligner_lr: float | None) -> list[tuple[str, tuple, float]]:
    """[(flag, module prefixes, learning rate)] for the parts given their own rate (aligner first: in some
    families, e.g. Qwen2-VL, the aligner `model.visual.merger` sits inside the vision module)."""
    parts = []
    for flag, prefixes, rate in (("--aligner_lr", family.aligner, aligner_lr),
                                 ("--vit_lr", family.vision_tower, vit_lr)):
        if rate is None:
            continue
        if not prefixes:
            raise UserError(f"{flag}: the {family.name} family has no such part (the registry lists none)")
        parts.append((flag, tuple(prefixes), rate))
    return parts


def _part_of(name: str, parts) -> int | None:
    name = name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name
    for index, (_, prefixes, _) in enumerate(parts):
        if any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes):
            return index
    return None


def parameter_groups(model, parts, learning_rate: float, weight_decay: float, decay_names) -> list[dict]:
    """AdamW groups: (each part, then the rest) x (decayed, not decayed); empty groups are left out.

    A part given its own rate that has no trainable parameter (frozen, or no LoRA layer in it) is a mistake
    in the flags, reported with the flag's name.
    """
    decay_names = set(decay_names)
    rates = [rate for _, _, rate in parts] + [learning_rate]
    buckets: list[list[list]] = [[[], []] for _ in rates]  # [part][decayed?]
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = _part_of(name, parts)
        buckets[len(parts) if part is None else part][0 if name in decay_names else 1].append(parameter)
    for (flag, prefixes, _), (decayed, undecayed) in zip(parts, buckets):
        if not decayed and not undecayed:
            raise UserError(f"{flag}: nothing trains in {', '.join(prefixes)} (frozen: see --freeze_vit, "
                            "--freeze_aligner, --lora_target_modules)")
    groups = []
    for rate, (decayed, undecayed) in zip(rates, buckets):
        if decayed:
            groups.append({"params": decayed, "weight_decay": weight_decay, "lr": rate})
        if undecayed:
            groups.append({"params": undecayed, "weight_decay": 0.0, "lr": rate})
    return groups
