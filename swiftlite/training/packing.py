"""Padding-free batches (`--packing true`): the rows of a padded batch joined into one sequence.

The collator pads as usual; just before the forward pass the padding is cut out and the rows are laid end
to end in a batch of one, with no attention mask and position ids that restart at each row. transformers
reads such position ids as packed sequences and keeps attention within each row (a block-diagonal mask
for sdpa/eager, cu_seqlens for flash-attention), so no compute goes to padding.

Position ids are computed on the padded batch, exactly as the model would compute them itself, and then cut
the same way, so each row sees the positions it would see alone. For the M-RoPE families (Qwen2-VL,
Qwen2.5-VL, Qwen3-VL) that is the model's own `get_rope_index` (temporal, height and width positions of the
image tokens), with the 1-D text positions in front, the [4, 1, tokens] layout these models read as packed.

Labels: in the padded batch a row's first token is never a target (the loss shifts by one). Joined, the
previous row's last token would be asked to predict it, so that label is masked: the loss is the same.
"""

from __future__ import annotations

from swiftlite.errors import UserError

IGNORE_INDEX = -100
# Families whose models read packed position ids (a transformers language model building its mask with
# create_causal_mask), each tested against the padded batch (tests/test_packing.py). Not Gemma 3 (its image
# tokens attend to each other both ways, a mask the packed layout does not carry), nor mllama / PaliGemma
# (cross-attention, prefix attention) or the remote-code families.
PACKING_FAMILIES = ("llava1_5", "llava_next", "llava_onevision", "qwen2-vl", "qwen2_5-vl", "qwen3-vl",
                    "glm4_1v", "internvl3", "smolvlm", "qwen2_5", "qwen3")
# Extra inputs of get_rope_index, where the batch has them.
_ROPE_KEYS = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts")


def check_packing(family) -> None:
    if family.name not in PACKING_FAMILIES:
        raise UserError(f"--packing true: not supported for the {family.name} family yet "
                        f"(supported: {', '.join(PACKING_FAMILIES)}); drop --packing")


def _rope_module(model):
    """The module holding `get_rope_index` (M-RoPE families), or None."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    for candidate in (model, getattr(model, "model", None)):
        if candidate is not None and hasattr(candidate, "get_rope_index"):
            return candidate
    return None


def pack_batch(model, batch: dict) -> dict:
    """A right-padded batch -> the same rows joined into a batch of one (see the module docstring)."""
    import torch

    mask = batch["attention_mask"].bool()
    input_ids = batch["input_ids"]
    text_positions = (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
    position_ids = text_positions[mask][None]  # [1, tokens]
    rope = _rope_module(model)
    has_media = any(batch.get(key) is not None for key in ("image_grid_thw", "video_grid_thw"))
    if rope is not None:
        if has_media:
            extra = {key: batch[key] for key in _ROPE_KEYS if batch.get(key) is not None}
            mrope, _ = rope.get_rope_index(input_ids, attention_mask=batch["attention_mask"], **extra)
        else:  # text only: the model's own default, the text positions on all three axes
            mrope = text_positions[None].expand(3, -1, -1)
        mrope = mrope.to(text_positions.device)
        position_ids = torch.cat([text_positions[None], mrope], dim=0)[:, mask][:, None, :]  # [4, 1, tokens]

    labels = batch["labels"].clone()
    labels[:, 0] = IGNORE_INDEX  # never a target in the padded batch either
    packed = {}
    for key, value in batch.items():
        if key == "attention_mask":
            continue
        if key == "labels":
            value = labels
        if torch.is_tensor(value) and value.shape == input_ids.shape and not value.is_floating_point():
            value = value[mask][None]  # a per-token sequence: cut the padding, join the rows
        packed[key] = value
    packed["position_ids"] = position_ids
    # transformers only reads position ids as packed rows when no KV cache is built (use_cache defaults on).
    packed["use_cache"] = False
    return packed
