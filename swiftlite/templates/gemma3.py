"""Gemma 3: `<start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n`; each `<start_of_image>` in the
render becomes the processor's full image sequence, and image soft tokens get token_type_ids 1."""

from __future__ import annotations

from swiftlite.templates.meta import Collation, MediaExpansion, Rendering, TemplateMeta


def processor_defaults(template) -> dict:
    return {"image_seq_length": int(template.model_config.get("mm_tokens_per_image", 256))}


def pan_and_scan_settings(template) -> dict:
    # Gemma3Processor's call defaults (pan-and-scan off) win over the image processor's own settings, so a
    # checkpoint's preprocessor_config.json asking for pan-and-scan would be ignored: pass its settings.
    names = ("do_pan_and_scan", "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops",
             "pan_and_scan_min_ratio_to_activate")
    return {name: getattr(template.image_processor, name) for name in names
            if getattr(template.image_processor, name, None) is not None}


GEMMA3_TEMPLATE = TemplateMeta(
    name="gemma3-vision",
    image_token="<start_of_image>",
    end_of_turn="<end_of_turn>",
    rendering=Rendering(
        raw_image_text="<start_of_image>",
        add_special_tokens=False,  # the chat template writes <bos> itself
    ),
    media=MediaExpansion(
        processor_call=True,  # Gemma3Processor: the full image sequence, pan-and-scan crops, token_type_ids
        processor_defaults=processor_defaults,
        processor_kwargs=pan_and_scan_settings,
        unused_image_keys=("num_crops",),
    ),
    collation=Collation(sequence_keys={"token_type_ids": 0}),
)
