"""SmolVLM / Idefics3: `<|im_start|>User:<image>text<end_of_utterance>\\nAssistant:`; each `<image>` in the render
becomes the processor's tile grid: `<fake_token_around_image><row_r_col_c>` + 64 `<image>` per tile, a newline
per row, then the global view `<fake_token_around_image><global-img>` + 64 `<image>` + `<fake_token_around_image>`."""

from __future__ import annotations

from swiftlite.templates.base import TemplateMeta


def image_seq_len(template) -> int:
    configured = template.processor_config.get("image_seq_len")
    if configured:
        return int(configured)
    vision = template.model_config.get("vision_config", {})
    patches = (vision.get("image_size", 512) // vision.get("patch_size", 16)) ** 2
    return int(patches / template.model_config.get("scale_factor", 4) ** 2)


def image_processor_call(template, images: list) -> dict:
    # One conversation is one sample: the processor takes its images as one nested list, so pixel_values is
    # (1, tiles of all images, C, H, W); rows/cols (tile grid per image) drive the expansion.
    return template.image_processor(images=[images], return_tensors="pt", return_row_col_info=True)


def expand_image_text(template, image_inputs: dict, index: int) -> str:
    # Official rule (Idefics3Processor.replace_image_token; SmolVLMProcessor's get_image_prompt_string is the same).
    rows, cols = int(image_inputs["rows"][0][index]), int(image_inputs["cols"][0][index])
    tokens = "<image>" * image_seq_len(template)
    global_view = f"<fake_token_around_image><global-img>{tokens}<fake_token_around_image>"
    if rows == 0 and cols == 0:
        return global_view
    text = ""
    for row in range(rows):
        for col in range(cols):
            text += f"<fake_token_around_image><row_{row + 1}_col_{col + 1}>{tokens}"
        text += "\n"
    return text + "\n" + global_view


def pad_images(key: str, tensors: list):
    """Each row holds (1, its images' tiles, ...); a batch pads the tile dimension with all-zero tiles (mask 0),
    which the model drops as padding, exactly as the processor pads samples of one call."""
    if key not in ("pixel_values", "pixel_attention_mask") or len({t.shape[1:] for t in tensors}) == 1:
        return None
    import torch

    longest = max(t.shape[1] for t in tensors)
    padded = [torch.cat([t, t.new_zeros((t.shape[0], longest - t.shape[1], *t.shape[2:]))], dim=1) for t in tensors]
    return torch.cat(padded, dim=0)


SMOLVLM_TEMPLATE = TemplateMeta(
    name="smolvlm",
    image_token="<image>",
    raw_image_text="<image>",
    end_of_turn="<end_of_utterance>",
    add_special_tokens=False,  # the chat template writes <|im_start|> (the bos) itself
    image_processor_call=image_processor_call,
    expand_image_text=expand_image_text,
    unused_image_keys=("rows", "cols"),
    collate_media=pad_images,
)
