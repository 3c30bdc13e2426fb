"""Qwen2.5-VL: the checkpoint's ChatML template (byte-identical to Qwen2-VL's) and Qwen2-VL's expansion rule.

Official rule (Qwen2_5_VLProcessor.replace_image_token): `<|image_pad|>` x grid_t*grid_h*grid_w // merge_size**2;
M-RoPE needs mm_token_type_ids (1 on image tokens, 2 on video tokens), as the processor returns.
"""

from swiftlite.templates.base import TemplateMeta
from swiftlite.templates.qwen2_vl import mm_token_type_ids, num_image_tokens

QWEN2_5_VL_TEMPLATE = TemplateMeta(
    tool_parser="hermes",
    name="qwen2_5-vl",
    image_token="<|image_pad|>",
    raw_image_text="<|vision_start|><|image_pad|><|vision_end|>",
    end_of_turn="<|im_end|>",
    add_special_tokens=False,
    num_image_tokens=num_image_tokens,
    extra_inputs=mm_token_type_ids,
    sequence_keys={"mm_token_type_ids": 0},
)
