"""LLaVA-OneVision (llava-hf): `<|im_start|>user <image>\\ntext<|im_end|>` ChatML variant, anyres_max_9 expansion."""

from __future__ import annotations

import math

from swiftlite.templates.base import TemplateMeta
from swiftlite.templates.llava_next import pad_patches, tile_size, unpadded_features


def base_tokens(template) -> int:
    """Tokens of one 384-px tile: (image_size / patch_size)^2, no CLS token (SigLIP)."""
    configured = template.processor_config.get("num_image_tokens")
    if configured:
        return int(configured)
    vision = template.model_config.get("vision_config", {})
    return (vision.get("image_size", 384) // vision.get("patch_size", 14)) ** 2


def num_image_tokens(template, image_inputs: dict, index: int) -> int:
    # Official rule (LlavaOnevisionProcessor.replace_image_token / _get_number_of_features).
    from transformers.image_processing_utils import select_best_resolution

    settings = template.processor_config
    strategy = settings.get("vision_feature_select_strategy") or template.model_config.get(
        "vision_feature_select_strategy", "full"
    )
    aspect_ratio = (settings.get("vision_aspect_ratio")
                    or template.model_config.get("vision_aspect_ratio", "anyres_max_9"))
    base = base_tokens(template)
    # Images of a sample given as one nested list are "multi-image" (no tiling): one tile plus a newline.
    per_sample = [int(n) for n in image_inputs.get("batch_num_images", [1] * len(image_inputs["image_sizes"]))]
    sample_size = next(n for n, end in zip(per_sample, _cumulative(per_sample)) if index < end)
    if sample_size != 1:
        count = base + 1
    else:
        orig_height, orig_width = (int(v) for v in image_inputs["image_sizes"][index])
        height, width = tile_size(image_inputs)
        best_height, best_width = select_best_resolution([orig_height, orig_width],
                                                         template.image_processor.image_grid_pinpoints)
        side = int(math.sqrt(base))
        unpadded, newlines = unpadded_features(orig_height, orig_width, side, side,
                                               best_height // height, best_width // width)
        rows, columns = newlines, unpadded // newlines
        max_tiles = int(aspect_ratio.strip("anyres_max_"))
        ratio = math.sqrt(rows * columns / (max_tiles * side**2))
        if ratio > 1.1:
            unpadded, newlines = int(rows // ratio) * int(columns // ratio), int(rows // ratio)
        count = unpadded + newlines + base
    return count - 1 if strategy == "default" else count


def _cumulative(values: list[int]) -> list[int]:
    total, out = 0, []
    for value in values:
        total += value
        out.append(total)
    return out


LLAVA_ONEVISION_TEMPLATE = TemplateMeta(
    name="llava-onevision-qwen",
    image_token="<image>",
    raw_image_text="<image>\n",
    end_of_turn="<|im_end|>",
    add_special_tokens=False,  # Qwen2's tokenizer adds no bos
    num_image_tokens=num_image_tokens,
    collate_media=pad_patches,
)
