"""Text-only Qwen LLMs (Qwen2.5, Qwen3): ChatML, rendered with the checkpoint's own chat template.

Their templates concatenate message['content'] as a string, so messages are passed as plain strings
(TemplateMeta.string_content). `fallback_chat_template` serves only checkpoints that ship none: plain ChatML,
for Qwen2.5 the text path of the Qwen2-VL template (default system 'You are a helpful assistant.'; the hub
Qwen2.5 text, whose default system names Qwen, is not in our offline sources), for Qwen3 without a default
system (as Qwen3's templates).
"""

from swiftlite.templates.meta import Rendering, TemplateMeta

CHATML_TURNS = (
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}" + CHATML_TURNS
)
CHATML_NO_DEFAULT_SYSTEM = "{% for message in messages %}" + CHATML_TURNS

QWEN2_5_TEMPLATE = TemplateMeta(
    name="qwen2_5",
    tool_parser="hermes",
    end_of_turn="<|im_end|>",
    rendering=Rendering(add_special_tokens=False, string_content=True, fallback_chat_template=CHATML),
)

QWEN3_TEMPLATE = TemplateMeta(
    name="qwen3",
    tool_parser="hermes",
    end_of_turn="<|im_end|>",
    rendering=Rendering(
        add_special_tokens=False,
        string_content=True,
        fallback_chat_template=CHATML_NO_DEFAULT_SYSTEM,
        # The hub's hybrid-thinking template gives only the last reply an empty <think> block: multi-turn samples
        # are labelled from the whole render (earlier replies without it, as the model sees its history).
        reply_ends_at_end_of_turn=True,
    ),
)
