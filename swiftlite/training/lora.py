"""Which weights train: LoRA target modules and freezing, from the family's module prefixes.

The registry says where each family keeps its vision tower, aligner, language model and lm_head, so that
"the language model's linear layers" (DEFAULT) never catches the vision tower by accident, and "every linear
layer" (ALL) never wraps lm_head (adapting the output projection of a large vocabulary buys little and costs
a lot of adapter weights).
"""

from __future__ import annotations

import warnings

from swiftlite.errors import UserError

KEYWORDS = ("DEFAULT", "ALL")


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _short_name(name: str) -> str:
    """'...layers.0.self_attn.q_proj' -> 'q_proj'; '...merger.mlp.0' -> 'mlp.0' (an index alone says nothing)."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]


def linear_module_names(model) -> list[str]:
    import torch

    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def resolve_target_modules(model, family, spec: list[str] | str, freeze_vit: bool = True,
                           freeze_aligner: bool = True) -> list[str]:
    """`--lora_target_modules` -> full names of the linear layers to wrap.

    DEFAULT: the language model's linear layers. ALL: every linear layer (vision tower and aligner included)
    except lm_head. Other entries (comma or space separated, combinable with the keywords) match linear
    layers whose name ends with them, inside the language model and the aligner. `--freeze_vit false` adds
    the vision tower's linear layers; `--freeze_aligner false` trains the aligner fully instead (see apply_lora).
    """
    entries = [part.strip() for item in ([spec] if isinstance(spec, str) else spec) for part in item.split(",")]
    entries = [entry for entry in entries if entry] or ["DEFAULT"]
    linear = [name for name in linear_module_names(model) if not _under(name, family.lm_head)]
    language = [name for name in linear if _under(name, family.language_model)]
    named_scope = [name for name in linear if _under(name, family.language_model + family.aligner)]
    chosen: set[str] = set()
    for entry in entries:
        if entry.upper() == "DEFAULT":
            chosen.update(language)
        elif entry.upper() == "ALL":
            chosen.update(linear)
        else:
            matched = [name for name in named_scope if name == entry or name.endswith("." + entry)]
            if not matched:
                leaves = sorted({_short_name(name) for name in named_scope})
                raise UserError(
                    f"--lora_target_modules {entry}: matches no linear layer of the language model or aligner "
                    f"(their names end with: {', '.join(leaves)}); or use DEFAULT or ALL"
                )
            chosen.update(matched)
    if not freeze_vit:
        chosen.update(name for name in linear if _under(name, family.vision_tower))
    if not freeze_aligner:
        chosen.difference_update(name for name in linear if _under(name, family.aligner))
    if not chosen:
        raise UserError("--lora_target_modules: no linear layer selected")
    return [name for name in linear if name in chosen]  # model order, for a readable adapter_config.json


def freeze_parts(model, family, freeze_vit: bool, freeze_aligner: bool) -> None:
    """Full fine-tuning: everything trains except the vision tower / aligner when asked to freeze them."""
    frozen = (family.vision_tower if freeze_vit else ()) + (family.aligner if freeze_aligner else ())
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not _under(name, frozen))


def apply_lora(model, family, target_modules: list[str], rank: int, alpha: int, dropout: float,
               freeze_aligner: bool = True):
    """Wrap the target modules with a peft LoRA adapter named "default"; everything else stays frozen.

    `--freeze_aligner false` trains the aligner fully next to the adapter (peft's modules_to_save), so its
    weights are saved in the checkpoint too.
    """
    from peft import LoraConfig, get_peft_model

    if rank <= 0:
        raise UserError(f"--lora_rank {rank}: must be positive")
    if not 0 <= dropout < 1:
        raise UserError(f"--lora_dropout {dropout}: expected a number in [0, 1)")
    fully_trained = () if freeze_aligner else family.aligner
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
        modules_to_save=list(fully_trained) or None, task_type=None, bias="none",
    )
    with warnings.catch_warnings():  # peft still calls transformers' renamed gradient-checkpointing helpers
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, config, adapter_name="default")


def parameter_summary(model) -> str:
    def count(parameter) -> int:  # ZeRO-3 leaves an empty placeholder and records the full size
        return getattr(parameter, "ds_numel", None) or parameter.numel()

    trainable = sum(count(p) for p in model.parameters() if p.requires_grad)
    total = sum(count(p) for p in model.parameters())
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.4f}%)"
