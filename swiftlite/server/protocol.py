"""OpenAI request bodies -> Conversation (or raw prompt) + SamplingParams, checked field by field.

Parsing is cheap and runs on the event loop (`parse_chat_request`, `parse_completion_request`); it rejects
bad fields with a 400 that names the field. Encoding loads the images and renders the chat template, so it
runs in the request handler's thread pool (`encode_request`) and rejects bad media and too-long prompts, still
before anything is queued for the model. Response and chunk shapes live in `swiftlite.server.responses`.

Fields that we do not implement are refused unless they hold their neutral value (num_beams 1, functions
[] ...): a client must never believe a setting took effect when it did not. Fields we do not know at all are
refused too unless null (ms-swift's client sends every field of its request config, unset ones as null).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from swiftlite.conversation import Conversation, bind_unplaced_media
from swiftlite.engine.generate import SamplingParams
from swiftlite.media import MediaError
from swiftlite.prompt_parts import (
    AUDIO_PLACEHOLDER,
    IMAGE_PLACEHOLDER,
    URL_PLACEHOLDER,
    bind_url_placeholders,
    content_parts_to_text,
    extract_media_tags,
)
from swiftlite.server.errors import APIError, bad_request, from_exception

# Sampling fields both endpoints share.
SAMPLING_FIELDS = {
    "model", "max_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "stop", "n", "stream",
    "stream_options", "user", "metadata", "store", "service_tier", "images", "audios", "videos",
}
SAMPLING_FIELDS |= {"logit_bias", "presence_penalty", "frequency_penalty", "response_format"}
CHAT_FIELDS = SAMPLING_FIELDS | {"messages", "max_completion_tokens", "logprobs", "top_logprobs",
                                 "parallel_tool_calls", "tools", "tool_choice"}
COMPLETION_FIELDS = SAMPLING_FIELDS | {"prompt", "logprobs", "echo", "best_of"}
# Known but not implemented: accepted only with the neutral value given here (None is always accepted).
NEUTRAL_VALUES = {
    "functions": ([], "function calling is not supported"),
    "function_call": ("none", "function calling is not supported"),
    "modalities": (["text"], "only text output is supported"),
    "num_beams": (1, "beam search is not supported"),
    "use_beam_search": (False, "beam search is not supported"),
    "length_penalty": (1, "length_penalty applies to beam search, which is not supported"),
    "suffix": ("", "suffix (insertion) is not supported"),
}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
PENALTY_RANGE = (-2.0, 2.0)  # presence_penalty, frequency_penalty
LOGIT_BIAS_RANGE = (-100.0, 100.0)
TOOL_CHOICES = ("none", "auto", "required")
# OpenAI's ranges. Values outside them are refused at the door: one row with an absurd value (repetition_penalty
# 1e-300 divides logits into inf, seed 2**64 overflows torch's generator) must not reach a batch shared with others.
MAX_TEMPERATURE = 2.0
REPETITION_PENALTY_RANGE = (0.01, 10.0)
SEED_RANGE = (-(2**63), 2**63 - 1)  # int64, as OpenAI and vLLM take it
MAX_STOP_WORDS = 4  # OpenAI's "up to 4 sequences"
MAX_STOP_LENGTH = 256  # characters per stop word: every generated token is matched against each
MAX_JSON_DEPTH = 64  # no OpenAI request nests deeper than about 6


@dataclass
class RawPrompt:
    """A /v1/completions prompt: text with <image>/<audio> placeholders and its media, sent without a template."""

    text: str
    images: list = field(default_factory=list)
    audios: list = field(default_factory=list)
    token_ids: list[int] | None = None  # a token-id prompt (then text is empty)


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
    tools: list | None = None
    tool_choice: object = "auto"  # "none", "auto", "required" or a function's name (str from {"function": ...})
    echo: bool = False
    best_of: int | None = None  # completions: best_of rows per prompt, the n likeliest answered
    prefill: bool = False  # chat: continue the last (assistant) message
    json_schema: dict | None = None  # response_format, checked; compiled to a grammar in encode_request
    json_mode: bool = False

    @property
    def rows_per_prompt(self) -> int:
        return max(self.n, self.best_of or 0)

    @property
    def parses_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"


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


# ---- the body as a whole --------------------------------------------------------------------------------
def parse_json_body(raw: bytes):
    """The body as JSON, refusing with a 400 what would break later: deep nesting, huge integers, lone surrogates."""
    import json

    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad_request(f"the request body is not valid JSON: {error}", code="invalid_json") from None
    except RecursionError:
        raise bad_request(f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels",
                          code="invalid_json") from None
    except ValueError as error:  # Python's 4300-digit cap on integer literals
        raise bad_request(f"the request body is not acceptable JSON: {str(error)[:120]}", code="invalid_json") from None
    check_json_values(body)
    return body


def check_json_values(body) -> None:
    """Walk the parsed body (without recursion): bounded depth, and every string valid Unicode.

    JSON's \\ud800 escapes decode to lone UTF-16 surrogates, which no tokenizer or encoder takes; they are
    refused here with the field's path instead of failing in the model's thread.
    """
    stack = [(body, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise bad_request(f"the request body nests JSON deeper than {MAX_JSON_DEPTH} levels",
                              param=path.lstrip(".") or None, code="invalid_json")
        if isinstance(value, str):
            if _has_surrogate(value):
                raise bad_request(f"{path.lstrip('.') or 'the body'} holds a lone UTF-16 surrogate (an unpaired "
                                  "\\ud800-\\udfff escape): send valid Unicode", param=path.lstrip(".") or None,
                                  code="invalid_unicode")
        elif isinstance(value, dict):
            for key, item in value.items():
                if _has_surrogate(key):
                    raise bad_request("a field name holds a lone UTF-16 surrogate", param=path.lstrip(".") or None,
                                      code="invalid_unicode")
                stack.append((item, f"{path}.{key}", depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value))


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


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
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise bad_request(f"unknown field '{shown}' for {endpoint} requests", param=shown, code="unknown_field")


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
    if len(stop) > MAX_STOP_WORDS:
        raise bad_request(f"'stop' has {len(stop)} entries: at most {MAX_STOP_WORDS} are allowed", param="stop")
    if any(len(word) > MAX_STOP_LENGTH for word in stop):
        raise bad_request(f"'stop' words may be at most {MAX_STOP_LENGTH} characters long", param="stop")
    return stop


def _common(body: dict, limits: RequestLimits) -> dict:
    """The fields both endpoints share, checked."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string", param="model")
    temperature = _number(body, "temperature", minimum=0, maximum=MAX_TEMPERATURE)
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
        "repetition_penalty": _number(body, "repetition_penalty", minimum=REPETITION_PENALTY_RANGE[0],
                                      maximum=REPETITION_PENALTY_RANGE[1]),
        "seed": _integer(body, "seed", minimum=SEED_RANGE[0], maximum=SEED_RANGE[1]),
        "stop": _stop_words(body),
        "presence_penalty": _number(body, "presence_penalty", minimum=PENALTY_RANGE[0], maximum=PENALTY_RANGE[1]),
        "frequency_penalty": _number(body, "frequency_penalty", minimum=PENALTY_RANGE[0],
                                     maximum=PENALTY_RANGE[1]),
        "logit_bias": _logit_bias(body),
    }
    json_mode, json_schema = _response_format(body)
    return {"json_mode": json_mode, "json_schema": json_schema,"model": model, "n": n, "stream": stream, "include_usage": include_usage, "sampling": sampling,
            "max_tokens": _integer(body, "max_tokens", minimum=1)}


def _logit_bias(body: dict) -> dict[int, float] | None:
    """{"token id": bias}, ids as strings (JSON keys) or ints; checked against the vocabulary in encode_request."""
    value = body.get("logit_bias")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request("'logit_bias' must be an object mapping token ids to biases from -100 to 100",
                          param="logit_bias")
    bias = {}
    for key, number in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise bad_request(f"'logit_bias' key {_show(key)} is not a token id", param="logit_bias") from None
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise bad_request(f"'logit_bias' for token {token} must be a number, got {_show(number)}",
                              param="logit_bias")
        if not LOGIT_BIAS_RANGE[0] <= number <= LOGIT_BIAS_RANGE[1]:
            raise bad_request(f"'logit_bias' for token {token} is {number:g}: biases go from -100 to 100",
                              param="logit_bias")
        bias[token] = float(number)
    return bias


def _response_format(body: dict) -> tuple[bool, dict | None]:
    """(JSON wanted, its schema or None): OpenAI's text / json_object / json_schema response formats."""
    value = body.get("response_format")
    if value is None:
        return False, None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return False, None
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise bad_request("'response_format.json_schema' must be an object with a 'name' and a 'schema'",
                              param="response_format.json_schema")
        if schema is None:
            schema = {}  # OpenAI's schema is optional: any JSON value
        if not isinstance(schema, dict):
            raise bad_request("'response_format.json_schema.schema' must be a JSON schema object",
                              param="response_format.json_schema.schema")
        from swiftlite.engine.logits import GrammarError, check_grammar, json_schema_grammar

        try:
            check_grammar(json_schema_grammar(schema))
        except GrammarError as error:
            raise bad_request(f"'response_format.json_schema.schema': {error}",
                              param="response_format.json_schema.schema", code="invalid_schema") from None
        return True, schema
    raise bad_request(f"'response_format.type' {_show(kind)} is not one of text, json_object, json_schema",
                      param="response_format.type")


def _tools(body: dict) -> tuple[list | None, object]:
    """The checked `tools` list and `tool_choice` ("none", "auto", "required" or the forced function's name)."""
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise bad_request("'tools' must be a list of {\"type\": \"function\", \"function\": {...}} objects",
                              param="tools")
        for index, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function,
                                                                                                         dict):
                raise bad_request(f"tools[{index}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                                  param=f"tools[{index}]")
            if not isinstance(function.get("name"), str) or not function["name"]:
                raise bad_request(f"tools[{index}].function.name must be a non-empty string",
                                  param=f"tools[{index}].function.name")
            parameters = function.get("parameters")
            if parameters is not None and not isinstance(parameters, dict):
                raise bad_request(f"tools[{index}].function.parameters must be a JSON schema object",
                                  param=f"tools[{index}].function.parameters")
        tools = tools or None
    choice = body.get("tool_choice")
    if choice is None:
        choice = "auto" if tools else "none"
    if isinstance(choice, dict):
        function = choice.get("function") if choice.get("type", "function") == "function" else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise bad_request("'tool_choice' must be none, auto, required or {\"type\": \"function\", "
                              "\"function\": {\"name\": ...}}", param="tool_choice")
        if name not in [tool["function"]["name"] for tool in tools or []]:
            raise bad_request(f"'tool_choice' names the function {_show(name)}, which is not in 'tools'",
                              param="tool_choice")
        return tools, name
    if choice not in TOOL_CHOICES:
        raise bad_request(f"'tool_choice' {_show(choice)} is not one of none, auto, required or a named function",
                          param="tool_choice")
    if choice == "required" and not tools:
        raise bad_request("'tool_choice' is required but no 'tools' were given", param="tool_choice")
    return tools, choice


def _tool_calls(calls, param: str) -> list[dict]:
    """An assistant message's `tool_calls` as chat templates take them (arguments as objects)."""
    import json

    if not isinstance(calls, list):
        raise bad_request(f"{param} must be a list", param=param)
    checked = []
    for number, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        where = f"{param}[{number}]"
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f"{where} must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", "
                              "\"arguments\"}}}}", param=where)
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments or "{}")
            except ValueError:
                raise bad_request(f"{where}.function.arguments is not valid JSON", param=f"{where}.function.arguments") \
                    from None
        checked.append({"id": call.get("id"), "type": "function",
                        "function": {"name": function["name"], "arguments": arguments}})
    return checked


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
    extra_images = _string_list(body, "images")
    if _has_url_placeholders(messages):
        messages, extra_images = _bind_url_placeholders(messages, extra_images), []
    conversation = Conversation()
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, dict):
            raise bad_request(f"{param} must be an object with 'role' and 'content'", param=param)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad_request(f"{param}.role {_show(role)} is not supported (use system, user, assistant or tool)",
                              param=f"{param}.role")
        content = message.get("content")
        calls = _tool_calls(message["tool_calls"], f"{param}.tool_calls") if message.get("tool_calls") else None
        if calls and role != "assistant":
            raise bad_request(f"{param}.tool_calls: only assistant messages hold tool calls",
                              param=f"{param}.tool_calls")
        if content is None and role != "assistant":
            raise bad_request(f"{param}.content is missing", param=f"{param}.content")
        try:
            text, images, audios = content_parts_to_text(_normalise_parts(content), videos=conversation.videos)
        except MediaError as error:
            raise bad_request(f"{param}.content: {error}", param=f"{param}.content", code="invalid_content") from None
        if role == "tool" and not any(m.get("tool_calls") for m in conversation.messages if m["role"] == "assistant"):
            raise bad_request(f"{param}.role: a 'tool' message must answer an earlier assistant message's tool_calls",
                              param=f"{param}.role")
        entry = {"role": ROLES[role], "content": text}
        if calls:
            entry["tool_calls"] = calls
        for key in ("tool_call_id", "name"):
            if role == "tool" and isinstance(message.get(key), str):
                entry[key] = message[key]
        conversation.messages.append(entry)
        conversation.images += images
        conversation.audios += audios
    last = conversation.messages[-1]["role"]
    system_only = len(conversation.messages) == 1 and last == "system"
    if last not in ("user", "tool", "assistant") and not system_only:
        raise bad_request("the last message must come from the user, a tool, or the assistant (to continue it)",
                          param=f"messages[{len(messages) - 1}].role")
    prefill = last == "assistant"
    if prefill and conversation.messages[-1].get("tool_calls"):
        raise bad_request("an assistant message with tool_calls cannot be continued: add the tool results",
                          param=f"messages[{len(messages) - 1}]")
    tools, tool_choice = _tools(body)
    conversation.tools = tools
    if prefill and tool_choice not in ("none", "auto"):
        raise bad_request("'tool_choice' required or named cannot continue an assistant message",
                          param="tool_choice")
    if tool_choice not in ("none", "auto") and common["json_mode"]:
        raise bad_request("'response_format' and a forced 'tool_choice' cannot both constrain one reply",
                          param="response_format")
    # ms-swift's `images`/`audios` fields: media for the conversation whose text holds no placeholder for them.
    conversation.images += extra_images
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
                         common["stream"], common["include_usage"], logprobs, top_logprobs, tools=tools,
                         tool_choice=tool_choice, prefill=prefill, json_schema=common["json_schema"],
                         json_mode=common["json_mode"])


def _text_slots(messages: list):
    """(message, part index or None) of every text in `messages` that may hold `<img/>` placeholders."""
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            yield message, None
        elif isinstance(content, list):
            for number, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    yield message, number


def _slot_text(message: dict, number: int | None) -> str:
    return message["content"] if number is None else message["content"][number]["text"]


def _has_url_placeholders(messages) -> bool:
    return isinstance(messages, list) and any(URL_PLACEHOLDER in _slot_text(m, n) for m, n in _text_slots(messages))


def _bind_url_placeholders(messages: list, images: list[str]) -> list:
    """rtp-llm's `<img/>` placeholders take the request's `images` in order (copies; the body is untouched)."""
    slots = list(_text_slots(messages))
    try:
        texts = bind_url_placeholders([_slot_text(m, n) for m, n in slots], images)
    except MediaError as error:
        raise bad_request(f"messages: {error}", param="images", code="invalid_content") from None
    copies = {id(m): dict(m, content=list(m["content"]) if isinstance(m["content"], list) else m["content"])
              for m, _ in slots}
    for (message, number), text in zip(slots, texts):
        copy = copies[id(message)]
        if number is None:
            copy["content"] = text
        else:
            copy["content"][number] = dict(copy["content"][number], text=text)
    return [copies.get(id(m), m) for m in messages]


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
    if best_of is not None and best_of < common["n"]:
        raise bad_request(f"'best_of' ({best_of}) must be at least n ({common['n']})", param="best_of")
    if best_of is not None and best_of > common["n"] and common["stream"]:
        raise bad_request("'best_of' greater than n cannot be streamed", param="best_of")
    top_logprobs = _integer(body, "logprobs", minimum=0, maximum=20)  # OpenAI's is 5; vLLM's default cap is 20
    echo = bool(_boolean(body, "echo"))

    prompt = body.get("prompt")
    token_prompts = None
    if isinstance(prompt, str):
        texts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(item, str) for item in prompt):
        texts = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(item, int) and not isinstance(item, bool)
                                                     for item in prompt):
        token_prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(
            isinstance(item, list) and item and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
            for item in prompt):
        token_prompts = prompt
    else:
        raise bad_request("'prompt' must be a string, a non-empty list of strings, a list of token ids or a list "
                          "of non-empty lists of token ids", param="prompt")
    if _string_list(body, "videos"):
        raise bad_request("'videos' is taken by /v1/chat/completions only", param="videos")
    if token_prompts is not None:
        if _string_list(body, "images") or _string_list(body, "audios"):
            raise bad_request("token-id prompts take no 'images'/'audios'", param="prompt")
        texts = []
    extra_images, extra_audios = _string_list(body, "images"), _string_list(body, "audios")
    if (extra_images or extra_audios) and len(texts) > 1:
        raise bad_request("'images'/'audios' need a single prompt: with several, put <img>...</img> tags in each",
                          param="images")
    per_prompt = max(common["n"], best_of or 0)
    count = len(token_prompts) if token_prompts is not None else len(texts)
    if count * per_prompt > limits.max_batch_size:
        raise bad_request(f"{count} prompts x {'best_of' if per_prompt > common['n'] else 'n'}={per_prompt} is "
                          f"more than this server batches together (--max_batch_size {limits.max_batch_size})",
                          param="prompt")
    prompts = [RawPrompt("", token_ids=list(ids)) for ids in token_prompts or []]
    for index, text in enumerate(texts):
        try:
            if URL_PLACEHOLDER in text:  # rtp-llm: `images` go where the <img/> placeholders are
                text, extra_images = bind_url_placeholders([text], extra_images)[0], []
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

    # best_of ranks its candidates by their mean token logprob, so they record logprobs even when not asked.
    wants_logprobs = top_logprobs is not None or per_prompt > common["n"]
    common["sampling"].update(logprobs=wants_logprobs, top_logprobs=top_logprobs or 0)
    if echo and top_logprobs is not None:
        common["sampling"]["prompt_logprobs"] = top_logprobs
    return ParsedRequest("completion", common["model"], prompts, common["sampling"], common["max_tokens"],
                         common["n"], common["stream"], common["include_usage"], top_logprobs is not None,
                         top_logprobs or 0, echo=echo, best_of=best_of, json_schema=common["json_schema"],
                         json_mode=common["json_mode"])


# ---- encoding (thread pool) ----------------------------------------------------------------------------------
def encode_request(parsed: ParsedRequest, template, limits: RequestLimits, generation_config=None) -> EncodedRequest:
    """Load media, render and tokenize each prompt, and settle max_tokens against --max_model_len."""
    param = "messages" if parsed.endpoint == "chat" else "prompt"
    vocab_size = template_vocab_size(template)
    bias = parsed.sampling.get("logit_bias") or {}
    bad = [token for token in bias if not 0 <= token < vocab_size]
    if bad:
        raise bad_request(f"'logit_bias' names token {bad[0]}, outside this model's vocabulary (0 to "
                          f"{vocab_size - 1})", param="logit_bias")
    grammar = _grammar(parsed, template)
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


def _grammar(parsed: ParsedRequest, template) -> str | None:
    """The llguidance grammar for response_format or a forced tool_choice, or None."""
    from swiftlite.engine.logits import GrammarError, check_grammar, json_schema_grammar

    if parsed.json_mode:
        return json_schema_grammar(parsed.json_schema)
    if parsed.tool_choice in ("none", "auto") or not parsed.tools:
        return None
    from swiftlite.tool_calls import get_parser

    parser = get_parser(template.meta.tool_parser)
    if parser is None:
        raise bad_request(f"template {template.meta.name!r} has no known tool-call format, so 'tool_choice' "
                          f"{_show(parsed.tool_choice)} cannot be enforced: use auto or none", param="tool_choice",
                          code="unsupported")
    tools = parsed.tools if parsed.tool_choice == "required" else [
        tool for tool in parsed.tools if tool["function"]["name"] == parsed.tool_choice]
    try:
        grammar = parser.forced_grammar(tools, template.tokenizer)
        check_grammar(grammar)
    except GrammarError as error:
        raise bad_request(f"'tools': {error}", param="tools", code="invalid_schema") from None
    return grammar


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
