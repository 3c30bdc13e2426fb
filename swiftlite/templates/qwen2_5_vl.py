"""Qwen2.5-VL: the checkpoint's ChatML template (byte-identical to Qwen2-VL's), encoded through
Qwen2_5_VLProcessor (placeholder expansion, pixel values, grids, mm_token_type_ids)."""

from swiftlite.templates.base import TemplateMeta

QWEN2_5_VL_TEMPLATE = TemplateMeta(
    tool_parser="hermes",
    name="qwen2_5-vl",
    image_token="<|image_pad|>",
    raw_image_text="<|vision_start|><|image_pad|><|vision_end|>",
    end_of_turn="<|im_end|>",
    add_special_tokens=False,
    processor_call=True,
    sequence_keys={"mm_token_type_ids": 0},
)
