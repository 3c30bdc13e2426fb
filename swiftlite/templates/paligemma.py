"""PaliGemma: a base model with no chat template. The official processor (PaliGemmaProcessor) writes
`<image>`*N + `<bos>` + prefix + `\\n` (the `<bos>` right after the last image), appends the suffix + `<eos>`
for training, and marks the suffix with token_type_ids 1 (the prefix attends bidirectionally).

Our prompt format renders exactly that from a conversation of one user turn (the prefix) and optionally one
reply (the suffix: the reply, then the eos that training appends because no turn token closes it). Raw
completion prompts get the processor's rewrite too.

Not encoded through PaliGemmaProcessor's __call__ (checked against transformers 5.24): it refuses a prompt
without images (validate_inputs: "`images` are expected"), while the base model also completes text; and it
writes the `\n` after the whole text, so a training row would need its reply passed apart as `suffix=`,
which the render-then-call path does not have. The expansion itself is the processor's one rule, below.
"""

from __future__ import annotations

from swiftlite.templates.base import IGNORE_INDEX
from swiftlite.templates.meta import Collation, MediaExpansion, Rendering, TemplateMeta

IMAGE_TOKEN = "<image>"

# The user turn: its parts in order, `<bos>` after the last image (first when there is none), then `\n`;
# the reply follows as plain text. A system prompt or history is refused before rendering.
PREFIX_SUFFIX_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- set ns = namespace(last=-1) -%}"
    "{%- for part in message['content'] -%}{%- if part['type'] == 'image' -%}{%- set ns.last = loop.index0 -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if ns.last < 0 -%}{{ bos_token }}{%- endif -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}" + IMAGE_TOKEN + "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}"
    "{%- if loop.index0 == ns.last -%}{{ bos_token }}{%- endif -%}"
    "{%- endfor -%}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def image_seq_length(template) -> int:
    processor = template.image_processor
    if getattr(processor, "image_seq_length", None):
        return int(processor.image_seq_length)
    vision = template.model_config.get("vision_config", {})
    return int(vision.get("num_image_tokens") or (vision["image_size"] // vision["patch_size"]) ** 2)


def num_image_tokens(template, image_inputs: dict, index: int) -> int:
    # Official rule (PaliGemmaProcessor.replace_image_token): image_seq_length copies, whatever the image.
    return image_seq_length(template)


def raw_prompt(template, text: str) -> str:
    # PaliGemmaProcessor.prepare_inputs_layout: `<bos>` after the last `<image>` (first without one), `\n` last.
    bos = template.tokenizer.bos_token
    if bos in text:
        return text
    cut = text.rfind(IMAGE_TOKEN) + len(IMAGE_TOKEN) if IMAGE_TOKEN in text else 0
    return text[:cut] + bos + text[cut:] + "\n"


def token_type_ids(template, row: dict) -> dict:
    # 0 on the prefix (bidirectional attention), 1 on the labelled suffix, as the processor does with a suffix.
    labels = row.get("labels")
    if labels is None:
        return {"token_type_ids": [0] * len(row["input_ids"])}
    return {"token_type_ids": [0 if label == IGNORE_INDEX else 1 for label in labels]}


PALIGEMMA_TEMPLATE = TemplateMeta(
    name="paligemma",
    image_token=IMAGE_TOKEN,
    end_of_turn=None,  # the suffix is closed by the eos that training appends, as the processor does
    supports_system=False,
    supports_multi_turn=False,
    is_chat=False,
    rendering=Rendering(
        raw_image_text=IMAGE_TOKEN,
        add_special_tokens=False,  # the processor turns the tokenizer's bos off and writes it itself
        raw_prompt=raw_prompt,
        chat_template_override=PREFIX_SUFFIX_TEMPLATE,
    ),
    media=MediaExpansion(num_image_tokens=num_image_tokens, row_inputs=token_type_ids),
    collation=Collation(sequence_keys={"token_type_ids": 0}),
)
