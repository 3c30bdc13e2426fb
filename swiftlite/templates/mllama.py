"""Llama 3.2 Vision (Mllama): the official Llama 3 chat template, `<|image|>` kept as one token per image.

Encoded through MllamaProcessor: the image features enter through cross-attention, so the processor expands
nothing and returns the tiles (pixel_values, aspect_ratio_ids/mask) and the cross_attention_mask (each image
seen from its `<|image|>` token up to the next image token or the end, on its valid tiles). Those are per
sample, so the family's own part is the batch: they are padded over images (and the mask over positions), and
text-only rows get empty fillers, as the processor pads a batch.
"""

from __future__ import annotations

from dataclasses import replace

from swiftlite.templates.meta import Collation, MediaExpansion, Rendering, TemplateMeta

IMAGE_TOKEN = "<|image|>"


def collate_rows(template, rows: list[dict], padding_side: str, length: int) -> dict:
    """Pad the per-sample image tensors over images (and the mask over positions); text-only rows get empty
    fillers, with the first tile of each missing image marked valid as MllamaImageProcessor pads a batch."""
    import torch

    with_images = [row for row in rows if "pixel_values" in row]
    if not with_images:
        return {}
    sample = with_images[0]
    num_images = max(row["pixel_values"].shape[1] for row in with_images)
    max_tiles = sample["pixel_values"].shape[2]
    pixel_values = sample["pixel_values"].new_zeros((len(rows), num_images, *sample["pixel_values"].shape[2:]))
    aspect_ratio_ids = torch.zeros((len(rows), num_images), dtype=torch.long)
    aspect_ratio_mask = torch.zeros((len(rows), num_images, max_tiles), dtype=torch.long)
    aspect_ratio_mask[:, :, 0] = 1
    mask = torch.zeros((len(rows), length, num_images, max_tiles), dtype=torch.long)
    for index, row in enumerate(rows):
        if "pixel_values" not in row:
            continue
        count, seq = row["pixel_values"].shape[1], len(row["input_ids"])
        pixel_values[index, :count] = row["pixel_values"][0]
        aspect_ratio_ids[index, :count] = row["aspect_ratio_ids"][0]
        aspect_ratio_mask[index, :count] = row["aspect_ratio_mask"][0]
        start = length - seq if padding_side == "left" else 0
        mask[index, start:start + seq, :count] = row["cross_attention_mask"][0]
        if padding_side != "left":
            # The processor computes spans on the padded ids: the spans that reach the end run through the padding.
            mask[index, seq:, :count] = row["cross_attention_mask"][0, -1]
    return {"pixel_values": pixel_values, "aspect_ratio_ids": aspect_ratio_ids,
            "aspect_ratio_mask": aspect_ratio_mask, "cross_attention_mask": mask}


MLLAMA_TEMPLATE = TemplateMeta(
    name="llama3_2-vision",
    tool_parser="llama3_json",
    image_token=IMAGE_TOKEN,
    end_of_turn="<|eot_id|>",
    rendering=Rendering(
        raw_image_text=IMAGE_TOKEN,
        add_special_tokens=False,  # the chat template writes <|begin_of_text|> itself
    ),
    # MllamaProcessor: one token per image (cross-attention), the tiles and the cross_attention_mask. The mask
    # runs along the positions: an eos that training appends after a reply sees what the token before it sees.
    media=MediaExpansion(processor_call=True, position_tensors=("cross_attention_mask",)),
    collation=Collation(collate_rows=collate_rows),
)

# The base checkpoint (Llama-3.2-11B-Vision) completes raw text: `<|image|>` + `<|begin_of_text|>` + prompt, the
# reply, then `<|end_of_text|>`. A raw completion prompt gets its `<|begin_of_text|>` from the processor itself
# (build_string_from_input), so it needs no rewrite here.
GENERATION_CHAT_TEMPLATE = (
    "{%- set ns = namespace(lead=true) -%}"
    "{%- for message in messages -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' and ns.lead -%}" + IMAGE_TOKEN +
    "{%- else -%}"
    "{%- if ns.lead -%}{{ bos_token }}{%- set ns.lead = false -%}{%- endif -%}"
    "{%- if part['type'] == 'image' -%}" + IMAGE_TOKEN + "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endif -%}"
    "{%- endfor -%}{%- endfor -%}"
    "{%- if ns.lead -%}{{ bos_token }}{%- endif -%}"
)


# The same image inputs as the chat template; training appends the tokenizer's eos after the reply.
MLLAMA_GENERATION_TEMPLATE = replace(
    MLLAMA_TEMPLATE, name="llama3_2-vision-generation", tool_parser=None, end_of_turn=None, supports_system=False,
    supports_multi_turn=False, is_chat=False,
    rendering=replace(MLLAMA_TEMPLATE.rendering, chat_template_override=GENERATION_CHAT_TEMPLATE),
)
