"""Qwen3-VL: the checkpoint's ChatML template (no default system prompt), encoded through Qwen3VLProcessor
(16-px patches, 32-px merged units; mm_token_type_ids drive the interleaved M-RoPE positions)."""

from swiftlite.templates.base import TemplateMeta

QWEN3_VL_TEMPLATE = TemplateMeta(
    tool_parser="hermes",
    name="qwen3-vl",
    image_token="<|image_pad|>",
    raw_image_text="<|vision_start|><|image_pad|><|vision_end|>",
    end_of_turn="<|im_end|>",
    add_special_tokens=False,
    processor_call=True,
    sequence_keys={"mm_token_type_ids": 0},
    # Thinking checkpoints ship a template that, like Qwen3's, may render only the last reply differently.
    reply_ends_at_end_of_turn=True,
)
