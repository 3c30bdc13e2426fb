"""Llama 3.2 Vision (Mllama): the official Llama 3 chat template, `<|image|>` kept as one token per image.

The image features enter through cross-attention, so instead of expanding the placeholder we build the
cross_attention_mask the official MllamaProcessor builds (get_cross_attention_token_mask +
convert_sparse_cross_attention_mask_to_dense): each image is seen from its `<|image|>` token up to the next
image token (a run of consecutive image tokens shares its span) or the end, on that image's valid tiles.
pixel_values, aspect_ratio_ids/mask and the mask are per sample, so a batch pads them over images (and the
mask over positions) and gives text-only rows empty fillers, as the processor pads a batch.
"""

from __future__ import annotations

from dataclasses import replace

from swiftlite.templates.meta import Collation, MediaExpansion, Rendering, TemplateMeta

IMAGE_TOKEN = "<|image|>"


def image_spans(input_ids: list[int], image_id: int) -> list[tuple[int, int]]:
    # Official rule (get_cross_attention_token_mask).
    locations = [i for i, token in enumerate(input_ids) if token == image_id]
    spans = [[start, end] for start, end in zip(locations, locations[1:] + [len(input_ids)])]
    last_end = len(input_ids)
    for span in reversed(spans):
        if span[0] == span[1] - 1:  # followed directly by another image token: share the next span's end
            span[1] = last_end
        last_end = span[1]
    return [(start, end) for start, end in spans]


def cross_attention_mask(template, row: dict) -> dict:
    import torch

    if "pixel_values" not in row:
        return {}
    input_ids = row["input_ids"]
    tile_counts = row["aspect_ratio_mask"][0].sum(dim=-1).tolist()
    max_tiles = row["aspect_ratio_mask"].shape[-1]
    mask = torch.zeros((1, len(input_ids), len(tile_counts), max_tiles), dtype=torch.long)
    for index, (start, end) in enumerate(image_spans(input_ids, template.token_id(IMAGE_TOKEN))):
        mask[0, start:end, index, : int(tile_counts[index])] = 1
    return {"cross_attention_mask": mask}


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
    media=MediaExpansion(
        num_image_tokens=lambda template, image_inputs, index: 1,  # no expansion: cross-attention
        unused_image_keys=("num_tiles",),
        row_inputs=cross_attention_mask,
    ),
    collation=Collation(collate_rows=collate_rows),
)

# The base checkpoint (Llama-3.2-11B-Vision) completes raw text: `<|image|>` + `<|begin_of_text|>` + prompt
# (MllamaProcessor's build_string_from_input), the reply, then `<|end_of_text|>`.
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


def raw_prompt(template, text: str) -> str:
    # Official rule (build_string_from_input): <|begin_of_text|> after the leading image tokens, unless present.
    bos = template.tokenizer.bos_token
    if bos in text:
        return text
    lead = 0
    while text.startswith(IMAGE_TOKEN, lead):
        lead += len(IMAGE_TOKEN)
    return text[:lead] + bos + text[lead:]


# The same image inputs as the chat template; training appends the tokenizer's eos after the reply.
MLLAMA_GENERATION_TEMPLATE = replace(
    MLLAMA_TEMPLATE, name="llama3_2-vision-generation", tool_parser=None, end_of_turn=None, supports_system=False,
    supports_multi_turn=False, is_chat=False,
    rendering=replace(MLLAMA_TEMPLATE.rendering, raw_prompt=raw_prompt,
                      chat_template_override=GENERATION_CHAT_TEMPLATE),
)
