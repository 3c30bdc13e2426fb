"""MiniCPM-V 4.6 and 4.7 (transformers' native `minicpmv4_6` and `minicpmv4_7`, one processor rule): ChatML
turns; each image is one `<|image_pad|>` in the render, which the official processor (MiniCPMV4_6Processor,
MiniCPMV4_7Processor) replaces before tokenizing by

    <image_id>{i}</image_id><image>{pad * n_0}</image>  then, for a sliced image, the slice rows
    <slice>{pad * n_k}</slice>... (a row's slices side by side, rows joined by "\n")

with i the image's index in the prompt (when the image processor's use_image_id is on, the default), and
n = target height * target width (in 14-px patches) // 16 (// 4 in "4x" downsample mode) for the overview
(n_0) and each slice (n_k) — target_sizes from the image processor.

The image processor packs every overview and slice of every image side by side into ONE tensor
`pixel_values` of shape [1, 3, patch, total length] (NaViT packing) with `target_sizes` [n_pieces, 2]; the
model reads `pixel_values[:1]`. So a batch joins the rows' pixel_values along the last dimension (not dim 0),
and target_sizes along dim 0: the features then fill the `<|image_pad|>` tokens in batch order, as they must.

MiniCPM-V 4.7 (config model_type `minicpmv4_7`) also takes mm_token_type_ids (1 on `<|image_pad|>`), as its
processor returns them: its canvas M-RoPE groups image tokens into overview and slice crops.

The hub chat template is not in our fixtures; the tiny checkpoint's (testing/fixtures/minicpm-v/
chat_template_4_6.jinja) is reconstructed. A real checkpoint's own template is always the one used.
"""

from swiftlite.templates.meta import Collation, MediaExpansion, Rendering, TemplateMeta

PAD = "<|image_pad|>"


def _token(template, name: str, default: str) -> str:
    # The processor reads these names from the tokenizer (tokenizer_config.json of the checkpoint).
    return getattr(template.tokenizer, name, None) or default


def image_text(template, image_inputs: dict, index: int) -> str:
    """MiniCPMV4_6Processor.replace_image_token + _prepend_local_ids for the index-th image of the prompt."""
    processor = template.image_processor
    divisor = 4 if getattr(processor, "downsample_mode", "16x") == "4x" else 16
    counts = [int(n) for n in image_inputs["num_patches_per_image"]]
    start = sum(counts[:index])
    sizes = image_inputs["target_sizes"][start:start + counts[index]]
    tokens = [int(h) * int(w) // divisor for h, w in sizes.tolist()]
    pad = _token(template, "image_token", PAD)
    text = (_token(template, "image_start_token", "<image>") + pad * tokens[0]
            + _token(template, "image_end_token", "</image>"))
    rows, cols = (int(v) for v in image_inputs["grids"][index])
    if getattr(processor, "slice_mode", True) and rows > 0 and cols > 0:
        slice_start = _token(template, "slice_start_token", "<slice>")
        slice_end = _token(template, "slice_end_token", "</slice>")
        slices = tokens[1:]
        text += "\n".join("".join(slice_start + pad * n + slice_end for n in slices[r * cols:(r + 1) * cols])
                          for r in range(rows))
    if getattr(processor, "use_image_id", True):
        text = (_token(template, "image_id_start_token", "<image_id>") + str(index)
                + _token(template, "image_id_end_token", "</image_id>") + text)
    return text


def mm_token_type_ids(template, input_ids: list[int]) -> dict:
    # MiniCPM-V 4.7 only (its processor returns them; 4.6's does not, and its model takes none): 1 on image
    # tokens, which the canvas M-RoPE groups into crops.
    if template.model_config.get("model_type") != "minicpmv4_7":
        return {}
    image_id = template.token_id(_token(template, "image_token", PAD))
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
    media=MediaExpansion(
        expand_image_text=image_text,
        unused_image_keys=("grids", "num_patches_per_image"),
        extra_inputs=mm_token_type_ids,
    ),
    collation=Collation(collate_media=collate_media, sequence_keys={"mm_token_type_ids": 0}),
)
