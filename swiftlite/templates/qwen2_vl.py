"""Qwen2-VL: the checkpoint's ChatML template; each image is `<|vision_start|><|image_pad|><|vision_end|>`.

Encoded through Qwen2VLProcessor itself: it expands `<|image_pad|>` to one token per merged 2x2 patch group and
returns pixel values, image_grid_thw and the mm_token_type_ids M-RoPE needs (without which transformers'
generate silently falls back to 1-D positions).
"""

from swiftlite.templates.base import TemplateMeta

QWEN2_VL_TEMPLATE = TemplateMeta(
    tool_parser="hermes",
    name="qwen2-vl",
    image_token="<|image_pad|>",
    raw_image_text="<|vision_start|><|image_pad|><|vision_end|>",
    end_of_turn="<|im_end|>",
    add_special_tokens=False,
    processor_call=True,
    sequence_keys={"mm_token_type_ids": 0},
)
