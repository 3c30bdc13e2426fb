"""SmolVLM / Idefics3: `<|im_start|>User:<image>text<end_of_utterance>\\nAssistant:`, encoded through
Idefics3Processor: each `<image>` in the render becomes its tile grid: `<fake_token_around_image><row_r_col_c>` + 64 `<image>` per tile, a newline
per row, then the global view `<fake_token_around_image><global-img>` + 64 `<image>` + `<fake_token_around_image>`."""

from __future__ import annotations

from swiftlite.templates.meta import Collation, MediaExpansion, Rendering, TemplateMeta


def processor_defaults(template) -> dict:
    vision = template.model_config.get("vision_config", {})
    patches = (vision.get("image_size", 512) // vision.get("patch_size", 16)) ** 2
    return {"image_seq_len": int(patches / template.model_config.get("scale_factor", 4) ** 2)}


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
    end_of_turn="<end_of_utterance>",
    rendering=Rendering(
        raw_image_text="<image>",
        add_special_tokens=False,  # the chat template writes <|im_start|> (the bos) itself
    ),
    media=MediaExpansion(
        processor_call=True,
        processor_defaults=processor_defaults,
        unused_image_keys=("rows", "cols"),
    ),
    collation=Collation(collate_media=pad_images),
)
