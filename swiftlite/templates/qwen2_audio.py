"""Qwen2-Audio: each clip is `Audio N: <|audio_bos|><|AUDIO|><|audio_eos|>\\n` in the chat template, and
`<|AUDIO|>` becomes one token per 40 ms of valid audio.

Encoded through Qwen2AudioProcessor: with L valid mel frames (100 per second, padded to 30 s) it writes
N = (((L - 1) // 2 + 1) - 2) // 2 + 1 `<|AUDIO|>` tokens (the encoder's stride-2 conv, then its stride-2
pooling) and returns input_features with their feature_attention_mask.

The base checkpoint (Qwen2-Audio-7B) was trained on raw prompts, `<|audio_bos|><|AUDIO|><|audio_eos|>` +
query (its README), so its template (ms-swift's qwen2-audio-generation) renders exactly that, followed by the
reply and the eos token, whatever chat template the checkpoint ships.
"""

from dataclasses import replace

from swiftlite.templates.meta import MediaExpansion, Rendering, TemplateMeta

AUDIO_TEXT = "<|audio_bos|><|AUDIO|><|audio_eos|>"


# The query's text with each audio part as the raw placeholder, then the reply: no roles, no system.
GENERATION_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' %}" + AUDIO_TEXT + "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endfor %}"
)

QWEN2_AUDIO_TEMPLATE = TemplateMeta(
    name="qwen2-audio",
    audio_token="<|AUDIO|>",
    end_of_turn="<|im_end|>",
    rendering=Rendering(raw_audio_text=AUDIO_TEXT, add_special_tokens=False),
    media=MediaExpansion(processor_call=True),
)

# The raw format closes no turn: training appends the tokenizer's eos after the reply.
QWEN2_AUDIO_GENERATION_TEMPLATE = replace(
    QWEN2_AUDIO_TEMPLATE, name="qwen2-audio-generation", end_of_turn=None, supports_system=False, is_chat=False,
    rendering=replace(QWEN2_AUDIO_TEMPLATE.rendering, chat_template_override=GENERATION_CHAT_TEMPLATE),
)
