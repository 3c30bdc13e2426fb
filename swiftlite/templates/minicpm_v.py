"""MiniCPM-V 4.6 and 4.7 (transformers' native `minicpmv4_6` and `minicpmv4_7`): ChatML turns; each image is
one `<|image_pad|>` in the render.

Encoded through the family's processor (MiniCPMV4_6Processor, MiniCPMV4_7Processor): it replaces each
`<|image_pad|>` by the image's id tag, overview and slice rows, and returns the NaViT-packed pixel_values and
target_sizes (and, for 4.7, the mm_token_type_ids its canvas M-RoPE groups crops by).

The family's own part is the batch: the image processor packs every overview and slice of every image side by
side into ONE tensor `pixel_values` of shape [1, 3, patch, total length] and the model reads
`pixel_values[:1]`, so a batch joins the rows' pixel_values along the last dimension (not dim 0), and
target_sizes along dim 0: the features then fill the `<|image_pad|>` tokens in batch order, as they must.

The hub chat template is not in our fixtures; the tiny checkpoint's (testing/fixtures/minicpm-v/
chat_template_4_6.jinja) is reconstructed. A real checkpoint's own template is always the one used.
"""

from swiftlite.templates.meta import Collation, MediaExpansion, Rendering, TemplateMeta

PAD = "<|image_pad|>"


def mm_token_type_ids(template, input_ids: list[int]) -> dict:
    # A prompt given as token ids (the server's /v1/completions) skips the processor: MiniCPM-V 4.7 still
    # takes mm_token_type_ids (1 on image tokens, as its processor gives them); 4.6's model takes none.
    if template.model_config.get("model_type") != "minicpmv4_7":
        return {}
    image_id = template.token_id(PAD)
    return {"mm_token_type_ids": [1 if t == image_id else 0 for t in input_ids]}


def collate_media(key: str, tensors: list):
    import torch

    if key in ("pixel_values", "pixel_values_videos"):
        # NaViT-packed [1, 3, patch, length] per row: one packed tensor for the whole batch.
        return torch.cat(tensors, dim=-1)
    return None


MINICPM_V_TEMPLATE = TemplateMeta(
    name="minicpm_v",
    image_token=PAD,
    end_of_turn="<|im_end|>",
    rendering=Rendering(raw_image_text=PAD, add_special_tokens=False),
    media=MediaExpansion(processor_call=True, extra_inputs=mm_token_type_ids),
    collation=Collation(collate_media=collate_media, sequence_keys={"mm_token_type_ids": 0}),
)
