"""LLaVA-OneVision (llava-hf): `<|im_start|>user <image>\\ntext<|im_end|>` ChatML variant, encoded through
LlavaOnevisionProcessor (the anyres_max_9 expansion; several images of one sample are not tiled)."""

from __future__ import annotations

from swiftlite.templates.meta import Collation, MediaExpansion, Rendering, TemplateMeta
from swiftlite.templates.llava_next import pad_patches


def processor_defaults(template) -> dict:
    # Tokens of one 384-px tile: (image_size / patch_size)^2, no CLS token (SigLIP).
    vision = template.model_config.get("vision_config", {})
    return {"num_image_tokens": (vision.get("image_size", 384) // vision.get("patch_size", 14)) ** 2,
            "vision_feature_select_strategy": template.model_config.get("vision_feature_select_strategy", "full"),
            "vision_aspect_ratio": template.model_config.get("vision_aspect_ratio", "anyres_max_9")}


LLAVA_ONEVISION_TEMPLATE = TemplateMeta(
    name="llava-onevision-qwen",
    image_token="<image>",
    end_of_turn="<|im_end|>",
    rendering=Rendering(
        raw_image_text="<image>\n",
        add_special_tokens=False,  # Qwen2's tokenizer adds no bos
    ),
    media=MediaExpansion(processor_call=True, processor_defaults=processor_defaults),
    collation=Collation(collate_media=pad_patches),
)
