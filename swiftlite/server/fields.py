"""Which fields a request may hold, and one field's type and range checks, each refusal a 400 naming the field.

Fields that we do not implement are refused unless they hold their neutral value (num_beams 1, functions
[] ...): a client must never believe a setting took effect when it did not. Fields we do not know at all are
refused too unless null (ms-swift's client sends every field of its request config, unset ones as null).
"""

from __future__ import annotations

import math

from swiftlite.server.errors import bad_request
from swiftlite.server.protocol import RequestLimits

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


def check_known_fields(body, allowed: set[str], endpoint: str) -> None:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for name, value in body.items():
        if value is None or name in allowed:
            continue
        if name in NEUTRAL_VALUES:
            neutral, why = NEUTRAL_VALUES[name]
            if value != neutral and not (isinstance(neutral, list) and value == []):
                raise bad_request(f"'{name}' = {show_value(value)} is not supported: {why}", param=name,
                                  code="unsupported")
            continue
        if name == "best_of" and endpoint == "completion":
            continue  # checked against n below
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise bad_request(f"unknown field '{shown}' for {endpoint} requests", param=shown, code="unknown_field")


def show_value(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def integer_field(body: dict, name: str, minimum: int | None = None, maximum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{name}' must be an integer, got {show_value(value)}", param=name)
    if minimum is not None and value < minimum:
        raise bad_request(f"'{name}' must be at least {minimum}, got {value}", param=name)
    if maximum is not None and value > maximum:
        raise bad_request(f"'{name}' must be at most {maximum}, got {value}", param=name)
    return value


def number_field(body: dict, name: str, minimum: float | None = None, maximum: float | None = None,
            above: float | None = None) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"'{name}' must be a number, got {show_value(value)}", param=name)
    if minimum is not None and value < minimum:
        raise bad_request(f"'{name}' must be at least {minimum:g}, got {value:g}", param=name)
    if maximum is not None and value > maximum:
        raise bad_request(f"'{name}' must be at most {maximum:g}, got {value:g}", param=name)
    if above is not None and value <= above:
        raise bad_request(f"'{name}' must be greater than {above:g}, got {value:g}", param=name)
    return float(value)


def boolean_field(body: dict, name: str) -> bool | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' must be true or false, got {show_value(value)}", param=name)
    return value


def string_list_field(body: dict, name: str) -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise bad_request(f"'{name}' must be a list of non-empty strings (URLs, data URLs, base64 or paths)",
                          param=name)
    return value


def check_media_limits(images: list, audios: list, limits: RequestLimits, param: str) -> None:
    for kind, items in (("image", images), ("audio", audios)):
        limit = limits.limit_mm_per_prompt.get(kind)
        if limit is not None and len(items) > limit:
            raise bad_request(f"{len(items)} {kind}s in one prompt, but this server takes at most {limit} "
                              f"(--limit_mm_per_prompt {kind}={limit})", param=param, code=f"too_many_{kind}s")
