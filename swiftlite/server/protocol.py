"""OpenAI request bodies -> Conversation (or raw prompt) + SamplingParams, checked field by field.

Parsing is cheap and runs on the event loop (`parse_chat_request`, `parse_completion_request`); it rejects
bad fields with a 400 that names the field. Encoding loads the images and renders the chat template, so it
runs in the request handler's thread pool (`encode_request`) and rejects bad media and too-long prompts, still
before anything is queued for the model. Response and chunk shapes live in `swiftlite.server.responses`.

Fields that we do not implement are refused unless they hold their neutral value (presence_penalty 0, tools
[] ...): a client must never believe a setting took effect when it did not. Fields we do not know at all are
refused too unless null (ms-swift's client sends every field of its request config, unset ones as null).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from swiftlite.conversation import Conversation, bind_unplaced_media
from swiftlite.engine.generate import SamplingParams
from swiftlite.media import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, MediaError, content_parts_to_text, extract_media_tags
from swiftlite.server.errors import APIError, bad_request, from_exception

# Sampling fields both endpoints share.
SAMPLING_FIELDS = {
    "model", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop", "n", "stream",
    "stream_options", "user", "metadata", "store", "service_tier", "images", "audios", "videos",
}
CHAT_FIELDS = SAMPLING_FIELDS | {"messages", "max_completion_tokens", "logprobs", "top_logprobs",
                                 "parallel_tool_calls"}
COMPLETION_FIELDS = SAMPLING_FIELDS | {"prompt", "logprobs"}
# Known but not implemented: accepted only with the neutral value given here (None is always accepted).
NEUTRAL_VALUES = {
    "presence_penalty": (0, "use repetition_penalty instead"),
    "frequency_penalty": (0, "use repetition_penalty instead"),
    "tools": ([], "tool calling is not supported"),
    "tool_choice": ("none", "tool calling is not supported"),
    "functions": ([], "function calling is not supported"),
    "function_call": ("none", "function calling is not supported"),
    "response_format": ({"type": "text"}, "only plain text responses are supported"),
    "logit_bias": ({}, "logit_bias is not supported"),
    "modalities": (["text"], "only text output is supported"),
    "num_beams": (1, "beam search is not supported"),
    "use_beam_search": (False, "beam search is not supported"),
    "length_penalty": (1, "length_penalty applies to beam search, which is not supported"),
    "echo": (False, "echo is not supported"),
    "suffix": ("", "suffix (insertion) is not supported"),
}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


@dataclass
class RawPrompt:
    """A /v1/completions prompt: text with <image>/<audio> placeholders and its media, sent without a template."""

    text: str
    images: list = field(default_factory=list)
    audios: list = field(default_factory=list)


@dataclass
class ParsedRequest:
    endpoint: str  # "chat" or "completion"
    model: str | None
    prompts: list  # chat: one Conversation; completion: RawPrompts
    sampling: dict  # overrides for SamplingParams.from_generation_config
    max_tokens: int | None
    n: int
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int


@dataclass
class EncodedRequest:
    rows: list[dict]  # one per choice (prompt x n)
    params: list[SamplingParams]  # one per row
    prompt_tokens: int  # counted once per prompt, as OpenAI does with n > 1


@dataclass
class RequestLimits:
    max_batch_size: int = 16
    limit_mm_per_prompt: dict = field(default_factory=dict)  # {"image": N, "audio": M}
    max_model_len: int = 4096
    default_max_tokens: int = 2048


# ---- field checks -----------------------------------------------------------------------------------------
def _check_fields(body, allowed: set[str], endpoint: str) -> None:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for name, value in body.items():
        if value is None or name in allowed:
            continue
        if name in NEUTRAL_VALUES:
            neutral, why = NEUTRAL_VALUES[name]
            if value != neutral and not (isinstance(neutral, list) and value == []):
                raise bad_request(f"'{name}' = {_show(value)} is not supported: {why}", param=name, code="unsupported")
            continue
        if name == "best_of" and endpoint == "completion":
            continue  # checked against n below
        raise bad_request(f"unknown field '{name}' for {endpoint} requests", param=name, code="unknown_field")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _integer(body: dict, name: str, minimum: int | None = None, maximum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{name}' must be an integer, got {_show(value)}", param=name)
    if minimum is not None and value < minimum:
        raise bad_request(f"'{name}' must be at least {minimum}, got {value}", param=name)
    if maximum is not None and value > maximum:
        raise bad_request(f"'{name}' must be at most {maximum}, got {value}", param=name)
    return value


def _number(body: dict, name: str, minimum: float | None = None, maximum: float | None = None,
            above: float | None = None) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"'{name}' must be a number, got {_show(value)}", param=name)
    if minimum is not None and value < minimum:
        raise bad_request(f"'{name}' must be at least {minimum:g}, got {value:g}", param=name)
    if maximum is not None and value > maximum:
        raise bad_request(f"'{name}' must be at most {maximum:g}, got {value:g}", param=name)
    if above is not None and value <= above:
        raise bad_request(f"'{name}' must be greater than {above:g}, got {value:g}", param=name)
    return float(value)


def _boolean(body: dict, name: str) -> bool | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' must be true or false, got {_show(value)}", param=name)
    return value


def _string_list(body: dict, name: str) -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise bad_request(f"'{name}' must be a list of non-empty strings (URLs, data URLs, base64 or paths)",
                          param=name)
    return value


def _stop_words(body: dict) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(word, str) and word for word in stop):
        raise bad_request("'stop' must be a non-empty string or a list of non-empty strings", param="stop")
    return stop


def _common(body: dict, limits: RequestLimits) -> dict:
    """The fields both endpoints share, checked."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string", param="model")
    temperature = _number(body, "temperature", minimum=0)
    top_k = _integer(body, "top_k", minimum=-1)
    n = _integer(body, "n", minimum=1) or 1
    if n > limits.max_batch_size:
        raise bad_request(f"'n' = {n} is more than this server batches together (--max_batch_size "
                          f"{limits.max_batch_size})", param="n")
    stream = bool(_boolean(body, "stream"))
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad_request("'stream_options' is only allowed when 'stream' is true", param="stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise bad_request("'stream_options' must be an object like {\"include_usage\": true}",
                              param="stream_options")
        include_usage = bool(_boolean(options, "include_usage"))
    sampling = {
        "temperature": temperature,
        # OpenAI's temperature 0 is greedy; any other given temperature means sampling even if the checkpoint's
        # generation_config.json says do_sample false.
        "do_sample": None if temperature is None else temperature > 0,
        "top_p": _number(body, "top_p", maximum=1, above=0),
        "top_k": 0 if top_k == -1 else top_k,  # vLLM's -1 and our 0 both mean "no top-k"
        "repetition_penalty": _number(body, "repetition_penalty", above=0),
        "seed": _integer(body, "seed"),
        "stop": _stop_words(body),
    }
    return {"model": model, "n": n, "stream": stream, "include_usage": include_usage, "sampling": sampling,
            "max_tokens": _integer(body, "max_tokens", minimum=1)}


MAX_VIDEOS_PER_PROMPT = 2


def _check_media_limits(images: list, audios: list, limits: RequestLimits, param: str) -> None:
    for kind, items in (("image", images), ("audio", audios)):
        limit = limits.limit_mm_per_prompt.get(kind)
        if limit is not None and len(items) > limit:
            raise bad_request(f"{len(items)} {kind}s in one prompt, but this server takes at most {limit} "
                              f"(--limit_mm_per_prompt {kind}={limit})", param=param, code=f"too_many_{kind}s")


# ---- chat ---------------------------------------------------------------------------------------------------
def parse_chat_request(body, limits: RequestLimits) -> ParsedRequest:
    _check_fields(body, CHAT_FIELDS, "chat")
    common = _common(body, limits)
    max_tokens = _integer(body, "max_completion_tokens", minimum=1) or common["max_tokens"]
    logprobs = bool(_boolean(body, "logprobs"))
    top_logprobs = _integer(body, "top_logprobs", minimum=0, maximum=20) or 0
    if top_logprobs and not logprobs:
        raise bad_request("'top_logprobs' needs 'logprobs': true", param="top_logprobs")

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list of {role, content} objects", param="messages")
    conversation = Conversation()
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"{param} must be an object with 'role' and 'content'", param=param)
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(f"{param}.role {role!r} is not supported (use system, user or assistant)",
                              param=f"{param}.role")
        if message.get("tool_calls"):
            raise bad_request(f"{param}.tool_calls: tool calling is not supported", param=f"{param}.tool_calls")
        content = message.get("content")
        if content is None and role != "assistant":
            raise bad_request(f"{param}.content is missing", param=f"{param}.content")
        try:
            text, images, audios = content_parts_to_text(_normalise_parts(content), videos=conversation.videos)
        except MediaError as error:
            raise bad_request(f"{param}.content: {error}", param=f"{param}.content", code="invalid_content") from None
        conversation.messages.append({"role": ROLES[role], "content": text})
        conversation.images += images
        conversation.audios += audios
    if conversation.messages[-1]["role"] != "user":
        raise bad_request("the last message must come from the user", param=f"messages[{len(messages) - 1}].role")
    # ms-swift's `images`/`audios` fields: media for the conversation whose text holds no placeholder for them.
    conversation.images += _string_list(body, "images")
    conversation.videos += _string_list(body, "videos")
    conversation.audios += _string_list(body, "audios")
    bind_unplaced_media(conversation)
    _check_media_limits(conversation.images, conversation.audios, limits, "messages")
    if len(conversation.videos) > MAX_VIDEOS_PER_PROMPT:
        # Each video costs a bounded decode (swiftlite/video.py); a request still may not ask for many.
        raise bad_request(f"{len(conversation.videos)} videos in one prompt, but this server takes at most "
                          f"{MAX_VIDEOS_PER_PROMPT}", param="messages", code="too_many_videos")

    common["sampling"].update(logprobs=logprobs, top_logprobs=top_logprobs)
    return ParsedRequest("chat", common["model"], [conversation], common["sampling"], max_tokens, common["n"],
                         common["stream"], common["include_usage"], logprobs, top_logprobs)


def _normalise_parts(content):
    """Accept Xinference's {"type": "audio", "audio_url": ...} and {"type": "image", "image_url": ...} parts."""
    if not isinstance(content, list):
        return content
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") in ("audio", "image", "video"):
            kind = part["type"]
            if part.get(kind) is None and part.get(f"{kind}_url") is not None:
                part = {"type": f"{kind}_url", f"{kind}_url": part[f"{kind}_url"]}
        parts.append(part)
    return parts


# ---- completions --------------------------------------------------------------------------------------------
def parse_completion_request(body, limits: RequestLimits) -> ParsedRequest:
    _check_fields(body, COMPLETION_FIELDS, "completion")
    common = _common(body, limits)
    best_of = _integer(body, "best_of", minimum=1)
    if best_of is not None and best_of != common["n"]:
        raise bad_request("'best_of' other than n is not supported", param="best_of", code="unsupported")
    top_logprobs = _integer(body, "logprobs", minimum=0, maximum=20)

    prompt = body.get("prompt")
    if isinstance(prompt, str):
        texts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(item, str) for item in prompt):
        texts = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(item, (int, list)) for item in prompt):
        raise bad_request("token-id prompts are not supported: send the prompt as text", param="prompt",
                          code="unsupported")
    else:
        raise bad_request("'prompt' must be a string or a non-empty list of strings", param="prompt")
    if _string_list(body, "videos"):
        raise bad_request("'videos' is taken by /v1/chat/completions only", param="videos")
    extra_images, extra_audios = _string_list(body, "images"), _string_list(body, "audios")
    if (extra_images or extra_audios) and len(texts) > 1:
        raise bad_request("'images'/'audios' need a single prompt: with several, put <img>...</img> tags in each",
                          param="images")
    if len(texts) * common["n"] > limits.max_batch_size:
        raise bad_request(f"{len(texts)} prompts x n={common['n']} is more than this server batches together "
                          f"(--max_batch_size {limits.max_batch_size})", param="prompt")
    prompts = []
    for index, text in enumerate(texts):
        try:
            text, images, audios = extract_media_tags(text)
        except MediaError as error:
            raise bad_request(f"prompt: {error}", param="prompt", code="invalid_content") from None
        images, audios = images + extra_images, audios + extra_audios
        # Media without placeholders go first, as in a chat turn.
        if extra_images and IMAGE_PLACEHOLDER not in text:
            text = IMAGE_PLACEHOLDER * len(images) + text
        if extra_audios and AUDIO_PLACEHOLDER not in text:
            text = AUDIO_PLACEHOLDER * len(audios) + text
        _check_media_limits(images, audios, limits, "prompt")
        prompts.append(RawPrompt(text, images, audios))

    common["sampling"].update(logprobs=top_logprobs is not None, top_logprobs=top_logprobs or 0)
    return ParsedRequest("completion", common["model"], prompts, common["sampling"], common["max_tokens"],
                         common["n"], common["stream"], common["include_usage"], top_logprobs is not None,
                         top_logprobs or 0)


# ---- encoding (thread pool) ----------------------------------------------------------------------------------
def encode_request(parsed: ParsedRequest, template, limits: RequestLimits, generation_config=None) -> EncodedRequest:
    """Load media, render and tokenize each prompt, and settle max_tokens against --max_model_len."""
    param = "messages" if parsed.endpoint == "chat" else "prompt"
    rows, params, prompt_tokens = [], [], 0
    for prompt in parsed.prompts:
        try:
            if parsed.endpoint == "chat":
                row = template.encode(prompt, add_generation_prompt=True)
            else:
                row = template.encode_raw(prompt.text, prompt.images, prompt.audios)
        except Exception as error:
            raise from_exception(error, param=param) from None
        length = len(row["input_ids"])
        max_tokens = _settle_max_tokens(length, parsed.max_tokens, limits, param)
        prompt_tokens += length
        base = SamplingParams.from_generation_config(generation_config, **parsed.sampling)
        base.max_new_tokens = max_tokens
        for choice in range(parsed.n):
            params_for_choice = copy.deepcopy(base)
            if base.seed is not None:
                params_for_choice.seed = base.seed + choice  # n choices with one seed should still differ
            rows.append(row)
            params.append(params_for_choice)
    return EncodedRequest(rows, params, prompt_tokens)


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
