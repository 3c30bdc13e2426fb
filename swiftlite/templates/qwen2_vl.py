"""Qwen2-VL: the checkpoint's ChatML template; each image is `<|vision_start|><|image_pad|><|vision_end|>`."""

from swiftlite.templates.base import TemplateMeta


def num_image_tokens(template, image_inputs: dict, index: int) -> int:
    # Official rule (Qwen2VLProcessor.replace_image_token): one token per merged 2x2 group of 14-px patches.
    merge_size = getattr(template.image_processor, "merge_size", 2)
    return int(image_inputs["image_grid_thw"][index].prod()) // merge_size**2


def mm_token_type_ids(template, input_ids: list[int]) -> dict:
    # M-RoPE needs to know which positions hold image tokens (1) or video tokens (2); without this tensor,
    # transformers' generate silently falls back to 1-D positions.
    image_id = template.token_id("<|image_pad|>")
    video_id = template.token_id("<|video_pad|>")
    return {"mm_token_type_ids": [1 if t == image_id else 2 if t == video_id else 0 for t in input_ids]}


QWEN2_VL_TEMPLATE = TemplateMeta(
    tool_parser="hermes",
    name="qwen2-vl",
    image_token="<|image_pad|>",
    raw_image_text="<|vision_start|><|image_pad|><|vision_end|>",
    end_of_turn="<|im_end|>",
    add_special_tokens=False,
    num_image_tokens=num_image_tokens,
    extra_inputs=mm_token_type_ids,
    sequence_keys={"mm_token_type_ids": 0},
)
