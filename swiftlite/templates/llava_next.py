"""LLaVA-NeXT (llava-hf v1.6): the checkpoint's own chat template, `<image>` expanded by the anyres rule.

Mistral checkpoints render `[INST] <image>\\n... [/INST] reply</s> `; Vicuna checkpoints render the
LLaVA-1.5 `USER: ... ASSISTANT:` format, which closes no turn (training appends </s> after each reply).
"""

from __future__ import annotations

from swiftlite.templates.base import TemplateMeta


def unpadded_features(height: int, width: int, patches_height: int, patches_width: int,
                      scale_height: int, scale_width: int) -> tuple[int, int]:
    """Feature rows x columns left after removing the padding the tiling added, and one newline per row."""
    current_height, current_width = patches_height * scale_height, patches_width * scale_width
    if width / height > current_width / current_height:
        new_height = int(round(height * (current_width / width), 7))
        current_height -= 2 * ((current_height - new_height) // 2)
    else:
        new_width = int(round(width * (current_height / height), 7))
        current_width -= 2 * ((current_width - new_width) // 2)
    return current_height * current_width, current_height


def tile_size(image_inputs: dict) -> tuple[int, int]:
    return tuple(image_inputs["pixel_values"][0][0].shape[-2:])


def num_image_tokens(template, image_inputs: dict, index: int) -> int:
    # Official rule (LlavaNextProcessor.replace_image_token / _get_number_of_features).
    settings = template.processor_config
    vision = template.model_config.get("vision_config", {})
    patch_size = settings.get("patch_size") or vision.get("patch_size", 14)
    additional = settings.get("num_additional_image_tokens", 0)
    strategy = settings.get("vision_feature_select_strategy") or template.model_config.get(
        "vision_feature_select_strategy", "default"
    )
    orig_height, orig_width = (int(v) for v in image_inputs["image_sizes"][index])
    height, width = tile_size(image_inputs)
    from transformers.image_processing_utils import select_best_resolution

    best_height, best_width = select_best_resolution([orig_height, orig_width],
                                                     template.image_processor.image_grid_pinpoints)
    patches_height, patches_width = height // patch_size, width // patch_size
    unpadded, newlines = unpadded_features(orig_height, orig_width, patches_height, patches_width,
                                           best_height // height, best_width // width)
    count = unpadded + newlines + patches_height * patches_width + additional
    return count - 1 if strategy == "default" else count


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
    raw_image_text="<image>\n",
    end_of_turn="</s>",
    add_special_tokens=True,  # the official processor tokenizes the render with the tokenizer's <s>
    num_image_tokens=num_image_tokens,
    collate_media=pad_patches,
)

LLAVA_VICUNA_TEMPLATE = TemplateMeta(
    name="llava-vicuna",
    image_token="<image>",
    raw_image_text="<image>\n",
    end_of_turn=None,  # `USER: ... ASSISTANT: reply ` closes no turn: training appends </s> after each reply
    add_special_tokens=True,
    num_image_tokens=num_image_tokens,
    collate_media=pad_patches,
)
