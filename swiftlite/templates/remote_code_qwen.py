"""Qwen-VL(-Chat) and Qwen-Audio(-Chat): remote-code checkpoints that take their media INSIDE the prompt text.

These checkpoints ship no chat template: the prompt format lives in their Python code (make_context in
qwen_generation_utils.py), reproduced here as a jinja template (facts: fixtures qwen-vl-chat, qwen-vl,
qwen-audio-chat):

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\nQ<|im_end|>\\n<|im_start|>assistant\\nA<|im_end|>\\n...

An image is written into the text as `<img>path-or-URL</img>` (users write `Picture 1:<img>..</img>\\n`
themselves, as the official `tokenizer.from_list_format` does) and an audio clip as `<audio>path</audio>`.
The checkpoint's own QWenTokenizer turns each span into a fixed layout, which `expand_inline` reproduces:

- image: `<img>` + the URL's bytes as ids (id = byte value) + `<imgpad>` up to 256 + `</img>` (258 ids);
  the model reads the URL back from those ids, loads the image and overwrites the 256 positions.
- audio: `<audio>` + `[[[AUDIO:modality]]]` x N + `</audio>`, N = (T - 2) // 2 + 1 with T the length after
  the encoder's convolutions of min(samples, 30 s) // 160 mel frames (tokenization_qwen.process_audio).
"""

from __future__ import annotations

from dataclasses import replace

from swiftlite.media import load_audio
from swiftlite.templates.base import IGNORE_INDEX, TemplateError
from swiftlite.templates.meta import MediaExpansion, Rendering, TemplateMeta

DEFAULT_SYSTEM = "You are a helpful assistant."
IMG_TOKEN_SPAN = 256  # Qwen-VL tokenization_qwen.py
AUDIO_PAD = "[[[AUDIO:modality]]]"

# A message's text, with each media part as our placeholder (Template.encode writes the source there).
_CONTENT = (
    "{%- macro content_text(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' -%}<image>{%- elif part['type'] == 'audio' -%}<audio>"
    "{%- else -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
)

CHATML_TEMPLATE = _CONTENT + (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "<|im_start|>system{{ '\\n' }}" + DEFAULT_SYSTEM + "<|im_end|>{{ '\\n' }}"
    "{%- endif -%}"
    "<|im_start|>{{ message['role'] }}{{ '\\n' }}{{ content_text(message['content']) }}<|im_end|>{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
)

# Base checkpoints: the raw text (query, then the reply), as in the Qwen-VL README.
GENERATION_TEMPLATE = _CONTENT + "{%- for message in messages -%}{{ content_text(message['content']) }}{%- endfor -%}"


def _spans(template, input_ids: list[int], start: str, end: str, count: int) -> list[tuple[int, int]]:
    """(start index, end index) of each start...end token pair, in order; their number must be `count`."""
    start_id, end_id = template.token_id(start), template.token_id(end)
    spans, index = [], 0
    while index < len(input_ids):
        if input_ids[index] == start_id:
            close = input_ids.index(end_id, index + 1) if end_id in input_ids[index + 1:] else -1
            if close < 0:
                raise TemplateError(f"a {start} in the prompt is never closed by {end}")
            spans.append((index, close))
            index = close
        index += 1
    if len(spans) != count:
        raise TemplateError(f"the prompt holds {len(spans)} {start}...{end} spans but {count} media items were given")
    return spans


def _replace_spans(input_ids, labels, spans, bodies):
    new_ids, new_labels, previous = [], [], 0
    for (start, end), body in zip(spans, bodies):
        new_ids += input_ids[previous:start + 1] + body
        new_labels += labels[previous:start + 1] + [IGNORE_INDEX] * len(body)
        previous = end
    return new_ids + input_ids[previous:], new_labels + labels[previous:]


def expand_image_urls(template, input_ids: list[int], labels: list[int], sources: dict):
    """Qwen-VL's _encode_imgurl: between <img> and </img>, the URL bytes then <imgpad> up to 256 ids."""
    urls = sources.get("image", [])
    if not urls:
        return input_ids, labels
    pad = template.token_id("<imgpad>")
    bodies = []
    for url in urls:
        data = url.encode("utf-8")
        if len(data) > IMG_TOKEN_SPAN:
            raise TemplateError(f"image path or URL is {len(data)} bytes; Qwen-VL takes at most {IMG_TOKEN_SPAN}: "
                                f"{url[:60]}...")
        bodies.append(list(data) + [pad] * (IMG_TOKEN_SPAN - len(data)))
    return _replace_spans(input_ids, labels, _spans(template, input_ids, "<img>", "</img>", len(urls)), bodies)


def audio_token_count(samples: int) -> int:
    """Qwen-Audio process_audio: audio tokens of a clip of `samples` samples at 16 kHz."""
    mel_frames = min(samples, 480000) // 160
    length = mel_frames
    for padding, kernel, stride in ((1, 3, 1), (1, 3, 2)):  # audio.py get_T_after_cnn
        length = 1 + (length + 2 * padding - (kernel - 1) - 1) // stride
    return (length - 2) // 2 + 1


def expand_audio_paths(template, input_ids: list[int], labels: list[int], sources: dict):
    """Qwen-Audio's _encode_audiourl: between <audio> and </audio>, one pad token per audio token."""
    paths = sources.get("audio", [])
    if not paths:
        return input_ids, labels
    pad = template.token_id(AUDIO_PAD)
    bodies = [[pad] * audio_token_count(len(load_audio(path, template.media_policy, sampling_rate=16000)))
              for path in paths]
    return _replace_spans(input_ids, labels, _spans(template, input_ids, "<audio>", "</audio>", len(paths)), bodies)


QWEN_VL_TEMPLATE = TemplateMeta(
    name="qwen-vl",
    image_token="<img>",
    end_of_turn="<|im_end|>",
    rendering=Rendering(
        raw_image_text="<image>",  # written back as <img>source</img> by inline_media
        add_special_tokens=False,
        fallback_chat_template=CHATML_TEMPLATE,
    ),
    media=MediaExpansion(inline_media={"image": "<img>{source}</img>"}, expand_inline=expand_image_urls),
)


QWEN_AUDIO_TEMPLATE = TemplateMeta(
    name="qwen-audio",
    audio_token="<audio>",
    end_of_turn="<|im_end|>",
    rendering=Rendering(raw_audio_text="<audio>", add_special_tokens=False, fallback_chat_template=CHATML_TEMPLATE),
    media=MediaExpansion(inline_media={"audio": "<audio>{source}</audio>"}, expand_inline=expand_audio_paths),
)


def generation_template(chat: TemplateMeta, name: str) -> TemplateMeta:
    """The base checkpoint's template of a chat template type: the raw query, then the reply (no system); a raw
    text closes no turn, so training appends <|endoftext|> after the reply."""
    rendering = replace(chat.rendering, fallback_chat_template=None, chat_template_override=GENERATION_TEMPLATE)
    return replace(chat, name=name, end_of_turn=None, supports_system=False, is_chat=False, rendering=rendering)


QWEN_VL_GENERATION_TEMPLATE = generation_template(QWEN_VL_TEMPLATE, "qwen-vl-generation")
QWEN_AUDIO_GENERATION_TEMPLATE = generation_template(QWEN_AUDIO_TEMPLATE, "qwen-audio-generation")
