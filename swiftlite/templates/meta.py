"""What a template type declares: plain data, in one small typed part per concern.

A family file registers a TemplateMeta: the facts the rest of swiftlite reads (its name, media tokens, turn
token, what a conversation may hold, its tool-call format), then the three parts base.Template reads when it
encodes and batches:

- Rendering: how a conversation becomes prompt text, and where the loss goes in it;
- MediaExpansion: how each media placeholder becomes the tokens and inputs the model takes;
- Collation: how encoded rows are padded and joined into one batch.

Callables take the bound Template first, so a rule can read the checkpoint's processors and config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from swiftlite.templates.base import Template


@dataclass(frozen=True)
class Rendering:
    # Tokenizer adds special tokens (bos) when the official processor tokenizes the rendered prompt.
    add_special_tokens: bool = True
    # Tokens that also end a reply, beyond eos and end_of_turn: where a template closes no turn, the model ends
    # its reply by starting the next turn (GLM-4.1V: `<|user|>`, `<|observation|>`).
    stop_tokens: tuple[str, ...] = ()
    # Give the chat template plain-string message contents instead of content-part lists: text-only LLM
    # templates (Qwen2.5, Qwen3) concatenate message['content'] as a string.
    string_content: bool = False
    # Roles whose content the chat template prints as a raw string (GLM-4.1V: system and assistant), while the
    # other roles still get content-part lists (string_content is the same for every role).
    string_content_roles: tuple[str, ...] = ()
    # Used only when the checkpoint ships no chat template (older or base checkpoints).
    fallback_chat_template: str | None = None
    # A template type's own prompt format, used instead of the checkpoint's chat template (ms-swift's
    # generation templates for base checkpoints, e.g. Qwen2-Audio-7B: the raw query, then the reply).
    chat_template_override: str | None = None
    # Locate a reply the render of turns[:k+1] does not reproduce inside the whole render by the end_of_turn
    # token that follows the generation prompt (templates that render only the last reply differently: Qwen3).
    reply_ends_at_end_of_turn: bool = False
    # What a raw completion prompt uses for an `<image>` placeholder (base models, /v1/completions).
    raw_image_text: str | None = None
    raw_audio_text: str | None = None
    # raw_prompt(template, text) -> the raw completion prompt as the official processor rewrites it before
    # tokenizing (PaliGemma: `<bos>` after the last image, `\n` at the end).
    raw_prompt: Callable[[Template, str], str] | None = None


@dataclass(frozen=True)
class MediaExpansion:
    # Encode through the checkpoint's official processor: its __call__ expands the media placeholders and
    # returns the pixel values, grids, mm_token_type_ids and the like, so the family file needs no expansion
    # rule; the labels found on the render are carried over to the processor's tokens (see Template._carry_labels).
    processor_call: bool = False
    # processor_defaults(template) -> processor settings read from config.json where processor_config.json
    # lacks them (checkpoints saved before processors had settings of their own, e.g. LLaVA's patch_size).
    processor_defaults: Callable[[Template], dict] | None = None
    # processor_kwargs(template) -> keyword arguments for each processor call: the checkpoint's settings that
    # the processor's own call defaults would override (Gemma 3's pan-and-scan).
    processor_kwargs: Callable[[Template], dict] | None = None
    # Without processor_call: N for the i-th image (or clip), fn(template, image_inputs, index) -> int.
    num_image_tokens: Callable[[Template, dict, int], int] | None = None
    num_audio_tokens: Callable[[Template, dict, int], int] | None = None
    # image_processor_call(template, pil_images) -> outputs: replaces the default image_processor call
    # (e.g. one nested list per sample, or row/col info the expansion needs).
    image_processor_call: Callable[[Template, list], dict] | None = None
    # expand_image_text(template, image_inputs, index) -> the text the official processor substitutes for the
    # index-th image placeholder in the rendered prompt before tokenizing (then num_image_tokens is unused).
    expand_image_text: Callable[[Template, dict, int], str] | None = None
    # Processor outputs used only to count tokens, never given to the model (transformers' unused_input_names).
    unused_image_keys: tuple[str, ...] = ()
    # Processor outputs laid out along the positions (dim 1) rather than as flat id lists (Mllama's
    # cross_attention_mask): an eos appended after a reply repeats the position before it.
    position_tensors: tuple[str, ...] = ()
    # Media the checkpoint's own code reads from the prompt text (Qwen-VL, Qwen-Audio): kind -> format with
    # {source}, e.g. {"image": "<img>{source}</img>"}. Each placeholder of that kind becomes the formatted path
    # or URL instead of going through an image processor.
    inline_media: dict = field(default_factory=dict)
    # expand_inline(template, input_ids, labels, sources {kind: [source, ...]}) -> (input_ids, labels): after
    # tokenizing, lay out each inline span as the checkpoint's own tokenizer does (Qwen-VL: <img> + 256 + </img>).
    expand_inline: Callable[[Template, list, list, dict], tuple[list, list]] | None = None
    # Extra model inputs computed from the final ids (MiniCPM-V 4.7's mm_token_type_ids, CogVLM2's token types).
    extra_inputs: Callable[[Template, list[int]], dict] | None = None
    # row_inputs(template, row) -> extra inputs computed from the whole encoded row (ids, labels, media):
    # PaliGemma's token_type_ids (1 on the labelled suffix).
    row_inputs: Callable[[Template, dict], dict] | None = None


@dataclass(frozen=True)
class Collation:
    # Sequence-aligned keys padded like input_ids (value used for padding).
    sequence_keys: dict = field(default_factory=dict)
    # collate_media(key, per-row tensors) -> batched value, or None for the default torch.cat along dim 0
    # (e.g. pad LLaVA-NeXT's per-image patch dimension to the longest row).
    collate_media: Callable[[str, list], Any] | None = None
    # collate_rows(template, rows, padding_side, length) -> batched values for keys that are per sample rather
    # than per image, so text-only rows need a filler in a mixed batch (Mllama's pixel_values, cross_attention_mask).
    collate_rows: Callable[[Template, list, str, int], dict] | None = None


@dataclass(frozen=True)
class TemplateMeta:
    name: str
    # The token the chat template emits once per image (or audio clip) and the processor expands to N copies.
    image_token: str | None = None
    audio_token: str | None = None
    # The token that closes an assistant turn in the official render. None: the official template closes
    # no turn (LLaVA-1.5), so for training we append the tokenizer's eos after each reply, as the original
    # training code did, or the model never learns to stop.
    end_of_turn: str | None = None
    supports_system: bool = True
    supports_multi_turn: bool = True
    max_images: int | None = None
    is_chat: bool = True
    # How this family writes tool calls (swiftlite.tool_calls.PARSERS): "hermes", "llama3_json", "glm4".
    tool_parser: str | None = None
    rendering: Rendering = Rendering()
    media: MediaExpansion = MediaExpansion()
    collation: Collation = Collation()

    # Read by the server (prompts given as token ids) and the trainer's dataset, which hold only the meta.
    @property
    def extra_inputs(self) -> Callable[[Template, list[int]], dict] | None:
        return self.media.extra_inputs

    @property
    def sequence_keys(self) -> dict:
        return self.collation.sequence_keys
