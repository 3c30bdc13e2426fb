"""Gemma 3: `<start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n`; each `<start_of_image>` in the
render becomes the processor's full image sequence, and image soft tokens get token_type_ids 1."""

from __future__ import annotations

from swiftlite.templates.base import TemplateMeta


def image_seq_length(template) -> int:
    configured = template.processor_config.get("image_seq_length")
    return int(configured or template.model_config.get("mm_tokens_per_image", 256))


def full_image_sequence(template) -> str:
    soft = template.tokenizer.image_token if getattr(template.tokenizer, "image_token", None) else "<image_soft_token>"
    return f"\n\n<start_of_image>{soft * image_seq_length(template)}<end_of_image>\n\n"


def expand_image_text(template, image_inputs: dict, index: int) -> str:
    # Official rule (Gemma3Processor.replace_image_token), pan-and-scan crops included.
    crops = int(image_inputs["num_crops"][index]) if "num_crops" in image_inputs else 0
    sequence = full_image_sequence(template)
    if not crops:
        return sequence
    return (f"Here is the original image {sequence} and here are some crops to help you see better "
            + " ".join([sequence] * crops))


def image_processor_call(template, images: list) -> dict:
    # The processor's own defaults for the pan-and-scan settings (null in the hub preprocessor_config.json).
    settings = {"do_convert_rgb": True, "do_pan_and_scan": False, "pan_and_scan_min_crop_size": 256,
                "pan_and_scan_max_num_crops": 4, "pan_and_scan_min_ratio_to_activate": 1.2}
    for name in settings:
        if getattr(template.image_processor, name, None) is not None:
            settings[name] = getattr(template.image_processor, name)
    return template.image_processor(images=images, return_tensors="pt", **settings)


def token_type_ids(template, input_ids: list[int]) -> dict:
    # 1 on image soft tokens: Gemma 3 lets an image's tokens attend to each other bidirectionally.
    soft_id = template.token_id(getattr(template.tokenizer, "image_token", None) or "<image_soft_token>")
    return {"token_type_ids": [1 if t == soft_id else 0 for t in input_ids]}


GEMMA3_TEMPLATE = TemplateMeta(
    name="gemma3-vision",
    image_token="<start_of_image>",
    raw_image_text="<start_of_image>",
    end_of_turn="<end_of_turn>",
    add_special_tokens=False,  # the chat template writes <bos> itself
    image_processor_call=image_processor_call,
    expand_image_text=expand_image_text,
    unused_image_keys=("num_crops",),
    extra_inputs=token_type_ids,
    sequence_keys={"token_type_ids": 0},
)
