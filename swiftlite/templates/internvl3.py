"""InternVL3 (-hf): plain ChatML; each image is `<IMG_CONTEXT>\\n` in the render, and the processor writes
`<img>` + `<IMG_CONTEXT>` x (256 per tile) + `</img>` in its place."""

from __future__ import annotations

from swiftlite.templates.base import TemplateMeta


def image_seq_length(template) -> int:
    return int(template.processor_config.get("image_seq_length") or template.model_config.get("image_seq_length", 256))


def expand_image_text(template, image_inputs: dict, index: int) -> str:
    # Official rule (InternVLProcessor.replace_image_token): 256 context tokens per tile, tiles from num_patches.
    tiles = int(image_inputs["num_patches"][index])
    return "<img>" + "<IMG_CONTEXT>" * (image_seq_length(template) * tiles) + "</img>"


INTERNVL3_TEMPLATE = TemplateMeta(
    name="internvl3-hf",
    image_token="<IMG_CONTEXT>",
    raw_image_text="<IMG_CONTEXT>\n",
    end_of_turn="<|im_end|>",
    add_special_tokens=False,  # Qwen2's tokenizer adds no bos
    expand_image_text=expand_image_text,
    unused_image_keys=("num_patches",),  # only counts tokens; pixel_values already holds every tile in order
)
