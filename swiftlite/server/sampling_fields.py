"""The sampling fields both endpoints share, checked against OpenAI's ranges: -> SamplingParams overrides."""

from __future__ import annotations

import math

from swiftlite.server.errors import bad_request
from swiftlite.server.fields import boolean_field, integer_field, number_field, show_value
from swiftlite.server.protocol import RequestLimits
from swiftlite.server.structured_output import response_format_fields

PENALTY_RANGE = (-2.0, 2.0)  # presence_penalty, frequency_penalty
LOGIT_BIAS_RANGE = (-100.0, 100.0)

# OpenAI's ranges. Values outside them are refused at the door: one row with an absurd value (repetition_penalty
# 1e-300 divides logits into inf, seed 2**64 overflows torch's generator) must not reach a batch shared with others.
MAX_TEMPERATURE = 2.0
REPETITION_PENALTY_RANGE = (0.01, 10.0)
SEED_RANGE = (-(2**63), 2**63 - 1)  # int64, as OpenAI and vLLM take it
MAX_STOP_WORDS = 4  # OpenAI's "up to 4 sequences"
MAX_STOP_LENGTH = 256  # characters per stop word: every generated token is matched against each


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


def common_fields(body: dict, limits: RequestLimits) -> dict:
    """The fields both endpoints share, checked."""
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string", param="model")
    temperature = number_field(body, "temperature", minimum=0, maximum=MAX_TEMPERATURE)
    top_k = integer_field(body, "top_k", minimum=-1)
    n = integer_field(body, "n", minimum=1) or 1
    if n > limits.max_batch_size:
        raise bad_request(f"'n' = {n} is more than this server batches together (--max_batch_size "
                          f"{limits.max_batch_size})", param="n")
    stream = bool(boolean_field(body, "stream"))
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad_request("'stream_options' is only allowed when 'stream' is true", param="stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise bad_request("'stream_options' must be an object like {\"include_usage\": true}",
                              param="stream_options")
        include_usage = bool(boolean_field(options, "include_usage"))
    sampling = {
        "temperature": temperature,
        # OpenAI's temperature 0 is greedy; any other given temperature means sampling even if the checkpoint's
        # generation_config.json says do_sample false.
        "do_sample": None if temperature is None else temperature > 0,
        "top_p": number_field(body, "top_p", maximum=1, above=0),
        "top_k": 0 if top_k == -1 else top_k,  # vLLM's -1 and our 0 both mean "no top-k"
        "repetition_penalty": number_field(body, "repetition_penalty", minimum=REPETITION_PENALTY_RANGE[0],
                                      maximum=REPETITION_PENALTY_RANGE[1]),
        "seed": integer_field(body, "seed", minimum=SEED_RANGE[0], maximum=SEED_RANGE[1]),
        "stop": _stop_words(body),
        "presence_penalty": number_field(body, "presence_penalty", minimum=PENALTY_RANGE[0], maximum=PENALTY_RANGE[1]),
        "frequency_penalty": number_field(body, "frequency_penalty", minimum=PENALTY_RANGE[0],
                                     maximum=PENALTY_RANGE[1]),
        "logit_bias": _logit_bias(body),
    }
    json_mode, json_schema = response_format_fields(body)
    return {"json_mode": json_mode, "json_schema": json_schema, "model": model, "n": n, "stream": stream,
            "include_usage": include_usage, "sampling": sampling,
            "max_tokens": integer_field(body, "max_tokens", minimum=1)}


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
            raise bad_request(f"'logit_bias' key {show_value(key)} is not a token id", param="logit_bias") from None
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise bad_request(f"'logit_bias' for token {token} must be a number, got {show_value(number)}",
                              param="logit_bias")
        if not LOGIT_BIAS_RANGE[0] <= number <= LOGIT_BIAS_RANGE[1]:
            raise bad_request(f"'logit_bias' for token {token} is {number:g}: biases go from -100 to 100",
                              param="logit_bias")
        bias[token] = float(number)
    return bias
