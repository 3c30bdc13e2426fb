"""ParsedRequest -> EncodedRequest, in the request handler's thread pool: media loaded, each prompt rendered and
tokenized, max_tokens settled against --max_model_len, one SamplingParams per row."""

from __future__ import annotations

import copy

from swiftlite.conversation import Conversation
from swiftlite.engine.generate import SamplingParams
from swiftlite.server.errors import APIError, bad_request, from_exception
from swiftlite.server.protocol import EncodedRequest, ParsedRequest, RequestLimits
from swiftlite.server.structured_output import constraint_grammar


def encode_request(parsed: ParsedRequest, template, limits: RequestLimits, generation_config=None) -> EncodedRequest:
    """Load media, render and tokenize each prompt, and settle max_tokens against --max_model_len."""
    param = "messages" if parsed.endpoint == "chat" else "prompt"
    vocab_size = template_vocab_size(template)
    bias = parsed.sampling.get("logit_bias") or {}
    bad = [token for token in bias if not 0 <= token < vocab_size]
    if bad:
        raise bad_request(f"'logit_bias' names token {bad[0]}, outside this model's vocabulary (0 to "
                          f"{vocab_size - 1})", param="logit_bias")
    grammar = constraint_grammar(parsed, template)
    rows, params, prompt_tokens = [], [], 0
    for prompt in parsed.prompts:
        try:
            if parsed.endpoint == "chat":
                row = encode_chat(template, prompt, parsed.prefill)
            elif prompt.token_ids is not None:
                row = _token_row(template, prompt.token_ids, vocab_size)
            else:
                row = template.encode_raw(prompt.text, prompt.images, prompt.audios)
        except APIError:
            raise
        except Exception as error:
            raise from_exception(error, param=param) from None
        length = len(row["input_ids"])
        max_tokens = _settle_max_tokens(length, parsed.max_tokens, limits, param)
        prompt_tokens += length
        base = SamplingParams.from_generation_config(generation_config, **parsed.sampling)
        base.max_new_tokens = max_tokens
        base.grammar = grammar
        for choice in range(parsed.rows_per_prompt):
            params_for_choice = copy.deepcopy(base)
            if base.seed is not None:
                params_for_choice.seed = base.seed + choice  # n choices with one seed should still differ
            rows.append(row)
            params.append(params_for_choice)
    return EncodedRequest(rows, params, prompt_tokens)


def template_vocab_size(template) -> int:
    """The model's vocabulary (its embedding rows, padding included), at least the tokenizer's."""
    config = template.model_config or {}
    size = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size") or 0
    return max(int(size), len(template.tokenizer))


def encode_chat(template, conversation: Conversation, prefill: bool = False) -> dict:
    """A chat request's prompt. Plain conversations take the template's own path (template.encode); tools, tool
    turns, prefill (continue the last assistant message) and system-only conversations are rendered here with the
    checkpoint's chat template (apply_chat_template's tools= and continue_final_message=)."""
    from swiftlite.prompt_parts import check_media_count

    messages = conversation.messages
    system_only = len(messages) == 1 and messages[0]["role"] == "system"
    plain = (not conversation.tools and not prefill and not system_only
             and all(m["role"] != "tool" and "tool_calls" not in m for m in messages))
    if plain:
        return template.encode(conversation, add_generation_prompt=True)
    conversation = template.with_default_system(conversation)
    messages = conversation.messages
    if conversation.system is not None and not template.meta.supports_system:
        raise bad_request(f"template {template.meta.name!r} has no system prompt", param="messages")
    for index, message in enumerate(messages):
        if message["role"] == "system" and index:
            raise bad_request(f"messages[{index}]: a system message may only come first", param="messages")
    check_media_count(conversation.texts(), conversation.images, conversation.audios)
    rendered = []
    for message in messages:
        entry = template._template_message({"role": message["role"], "content": message["content"]})
        entry.update({key: message[key] for key in ("tool_calls", "tool_call_id", "name") if key in message})
        rendered.append(entry)
    extra = {"tools": conversation.tools} if conversation.tools else {}
    if prefill:
        text = template.render(rendered, add_generation_prompt=False, continue_final_message=True, **extra)
    else:
        text = template.render(rendered, add_generation_prompt=True, **extra)
    return template.encode_text(text, conversation.images, conversation.audios, [])


def _token_row(template, token_ids: list[int], vocab_size: int) -> dict:
    bad = [token for token in token_ids if not 0 <= token < vocab_size]
    if bad:
        raise bad_request(f"the prompt holds token id {bad[0]}, outside this model's vocabulary (0 to "
                          f"{vocab_size - 1})", param="prompt")
    row = {"input_ids": list(token_ids), "attention_mask": [1] * len(token_ids), "labels": [-100] * len(token_ids)}
    if template.meta.extra_inputs:
        row.update(template.meta.extra_inputs(template, list(token_ids)))
    return row


def _settle_max_tokens(prompt_length: int, requested: int | None, limits: RequestLimits, param: str) -> int:
    room = limits.max_model_len - prompt_length
    if room <= 0:
        raise APIError(400, f"this model's maximum context length is {limits.max_model_len} tokens, but the prompt "
                            f"has {prompt_length} tokens (images included): shorten it or send fewer or smaller images",
                       param=param, code="context_length_exceeded")
    if requested is None:
        return min(limits.default_max_tokens, room)
    if requested > room:
        raise APIError(400, f"this model's maximum context length is {limits.max_model_len} tokens, but "
                            f"{prompt_length + requested} were requested ({prompt_length} in the prompt, {requested} "
                            "for the completion): lower max_tokens", param="max_tokens", code="context_length_exceeded")
    return requested
