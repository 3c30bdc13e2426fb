"""Which dtype the weights load in, which autocast the Trainer runs, and which weights are kept in fp32.

The usual recipe for half-precision training on GPUs:

- bf16 (Ampere and newer) and fp16 (older GPUs) run under autocast (mixed precision): the matmuls run in
  half precision while the weights that train, and so AdamW's update, stay fp32. Frozen weights load in half
  precision (half the memory); trainable ones (LoRA, `--freeze_aligner false`'s modules_to_save, everything of
  a full fine-tune) are upcast to fp32 after choosing what trains. fp16 needs it: the gradient scaler refuses to
  unscale fp16 gradients ("Attempting to unscale FP16 gradients"). bf16 needs it for quality: without an fp32
  master copy, small updates vanish in bf16's 8-bit mantissa.
- `--pure_bf16 true` trains the bf16 weights themselves, without autocast and without fp32 copies: half the
  optimiser memory, at the cost of those lost updates (LLaMA-Factory's pure_bf16).
- DeepSpeed keeps its own fp32 master weights (its bf16/fp16 sections follow the Trainer's flags), so
  nothing is upcast. FSDP flattens the parameters of a unit into one tensor of one dtype, so frozen and
  trainable weights cannot differ: the weights load in fp32 and FSDP's mixed precision computes in half.
- On CPU, `--dtype auto` trains in fp32; `--dtype bf16` uses CPU autocast like a GPU, `--dtype fp16` trains
  the fp16 weights as they are (CPUs have no fp16 autocast with a gradient scaler).
"""

from __future__ import annotations

from dataclasses import dataclass

from swiftlite.errors import UserError


@dataclass(frozen=True)
class Precision:
    load_dtype: str  # "bfloat16" | "float16" | "float32": what from_pretrained loads the weights in
    autocast: str | None  # "bf16" | "fp16" | None: TrainingArguments(bf16=..., fp16=...)
    upcast_trainable: bool  # trainable parameters to fp32 once what trains is chosen

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.load_dtype)


def plan_precision(dtype: str, *, on_gpu: bool, pure_bf16: bool = False, deepspeed: bool = False,
                   fsdp: bool = False) -> Precision:
    """`dtype` is the chosen compute dtype ("bfloat16", "float16" or "float32", after resolving --dtype auto)."""
    if pure_bf16 and dtype != "bfloat16":
        raise UserError(f"--pure_bf16 true trains bf16 weights, but the dtype is {dtype} (pass --dtype bf16)")
    if pure_bf16 and (deepspeed or fsdp):
        raise UserError("--pure_bf16 true: DeepSpeed and FSDP keep fp32 master weights themselves; drop --pure_bf16")
    if dtype == "float32":
        return Precision("float32", None, False)
    if pure_bf16:
        return Precision("bfloat16", None, False)
    if not on_gpu and dtype == "float16":
        return Precision("float16", None, False)
    autocast = "bf16" if dtype == "bfloat16" else "fp16"
    if deepspeed:
        return Precision(dtype, autocast, False)
    if fsdp:
        return Precision("float32", autocast, False)
    return Precision(dtype, autocast, True)


def upcast_trainable_parameters(model) -> int:
    """Trainable parameters to fp32 (in place); returns how many tensors changed."""
    import torch

    changed = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype in (torch.float16, torch.bfloat16):
            parameter.data = parameter.data.float()
            changed += 1
    return changed
