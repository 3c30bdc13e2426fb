"""LLaVA-NeXT (llava-hf v1.6): the checkpoint's own chat template, encoded through LlavaNextProcessor (the
anyres expansion of `<image>`).

Mistral checkpoints render `[INST] <image>\\n... [/INST] reply</s> `; Vicuna checkpoints render the
LLaVA-1.5 `USER: ... ASSISTANT:` format, which closes no turn (training appends </s> after each reply).
"""

from __future__ import annotations

from dataclasses import replace

from swiftlite.templates.meta import Collation, MediaExpansion, Rendering, TemplateMeta


def processor_defaults(template) -> dict:
    vision = template.model_config.get("vision_config", {})
    return {"patch_size": vision.get("patch_size", 14), "num_additional_image_tokens": 0,
            "vision_feature_select_strategy": template.model_config.get("vision_feature_select_strategy", "default")}


def pad_patches(key: str, tensors: list):
    """Rows carry (images, patches, C, H, W) pixel values padded to their own largest patch count; a batch
    pads the patch dimension to the largest of all rows with zeros, as the processor does for one call
    (the model reads each image's real patch count back from image_sizes)."""
    if key != "pixel_values" or len({t.shape[1:] for t in tensors}) == 1:
        return None
    import torch

    longest = max(t.shape[1] for t in tensors)
    padded = [torch.cat([t, t.new_zeros((t.shape[0], longest - t.shape[1], *t.shape[2:]))], dim=1) for t in tensors]
    return torch.cat(padded, dim=0)


LLAVA_MISTRAL_TEMPLATE = TemplateMeta(
    name="llava-mistral",
    image_token="<image>",
    end_of_turn="</s>",
    rendering=Rendering(
        raw_image_text="<image>\n",
        add_special_tokens=True,  # the official processor tokenizes the render with the tokenizer's <s>
    ),
    media=MediaExpansion(processor_call=True, processor_defaults=processor_defaults),
    collation=Collation(collate_media=pad_patches),
)

# `USER: ... ASSISTANT: reply ` closes no turn: training appends </s> after each reply.
LLAVA_VICUNA_TEMPLATE = replace(LLAVA_MISTRAL_TEMPLATE, name="llava-vicuna", end_of_turn=None)
