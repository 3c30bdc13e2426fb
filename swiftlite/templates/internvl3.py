"""InternVL3 (-hf): plain ChatML; each image is `<IMG_CONTEXT>\\n` in the render, and InternVLProcessor writes
`<img>` + `<IMG_CONTEXT>` x (256 per tile) + `</img>` in its place."""

from __future__ import annotations

from swiftlite.templates.meta import MediaExpansion, Rendering, TemplateMeta


def processor_defaults(template) -> dict:
    return {"image_seq_length": int(template.model_config.get("image_seq_length", 256))}


INTERNVL3_TEMPLATE = TemplateMeta(
    name="internvl3-hf",
    image_token="<IMG_CONTEXT>",
    end_of_turn="<|im_end|>",
    rendering=Rendering(
        raw_image_text="<IMG_CONTEXT>\n",
        add_special_tokens=False,  # Qwen2's tokenizer adds no bos
    ),
    media=MediaExpansion(
        processor_call=True,
        processor_defaults=processor_defaults,
        unused_image_keys=("num_patches",),  # only counts tokens; pixel_values already holds every tile in order
    ),
)
