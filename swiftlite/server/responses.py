"""OpenAI response shapes: chat.completion, text_completion, their stream chunks, usage and logprobs.

Streaming follows OpenAI exactly: every chunk carries id, object, created and model; the first chunk of each
chat choice carries the role; the last chunk of each choice carries its finish_reason (and, when asked, its
logprobs); a usage chunk with `choices: []` comes last when `stream_options.include_usage` is set.
"""

from __future__ import annotations

import json
import math
import time
import uuid

from swiftlite.engine.generate import RowResult
from swiftlite.server.protocol import ParsedRequest

# Generation ended because the client or the server stopped it; OpenAI has no word for it, so say "abort".
FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "abort"}


# OpenAI's value for "impossible": a token that top-k/top-p ruled out has logprob -inf, which JSON cannot carry.
LOGPROB_FLOOR = -9999.0


def _logprob(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) and value > LOGPROB_FLOOR else LOGPROB_FLOOR  # NaN too: JSON has no NaN


def sse(payload: dict | str) -> str:
    # allow_nan=False: a NaN would be written as the bare word NaN, which no JSON parser reads.
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"),
                                                               allow_nan=False)
    return f"data: {data}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class ResponseBuilder:
    """Builds every JSON object of one response, so ids and timestamps agree across chunks."""

    def __init__(self, parsed: ParsedRequest, model_name: str, tokenizer):
        self.parsed = parsed
        self.chat = parsed.endpoint == "chat"
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _envelope(self, chunk: bool) -> dict:
        if self.chat:
            kind = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model_name}

    # ---- whole responses ------------------------------------------------------------------------------
    def final(self, results: list[RowResult], prompt_tokens: int) -> dict:
        choices = []
        for index, result in enumerate(results):
            choice = {"index": index}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": result.text}
            else:
                choice["text"] = result.text
            choice["logprobs"] = self.logprobs(result) if self.parsed.logprobs else None
            choice["finish_reason"] = FINISH_REASONS.get(result.finish_reason, result.finish_reason)
            choices.append(choice)
        completion_tokens = sum(len(result.token_ids) for result in results)
        return {**self._envelope(chunk=False), "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}

    # ---- stream chunks --------------------------------------------------------------------------------
    def _chunk(self, choice: dict) -> dict:
        chunk = {**self._envelope(chunk=True), "choices": [choice]}
        if self.parsed.include_usage:
            chunk["usage"] = None  # as OpenAI: present on every chunk, filled only on the last
        return chunk

    def role_chunk(self, index: int) -> dict:
        return self._chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None})

    def delta_chunk(self, index: int, text: str) -> dict:
        if self.chat:
            return self._chunk({"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None})
        return self._chunk({"index": index, "text": text, "logprobs": None, "finish_reason": None})

    def finish_chunk(self, index: int, result: RowResult) -> dict:
        # The delta holds an empty string rather than nothing, so `print(chunk.choices[0].delta.content)` in
        # ms-swift's client examples prints nothing instead of "None".
        choice = {"index": index}
        if self.chat:
            choice["delta"] = {"content": ""}
        else:
            choice["text"] = ""
        # All of a choice's logprobs come with its last chunk: clients concatenate them across chunks.
        choice["logprobs"] = self.logprobs(result) if self.parsed.logprobs else None
        choice["finish_reason"] = FINISH_REASONS.get(result.finish_reason, result.finish_reason)
        return self._chunk(choice)

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict:
        return {**self._envelope(chunk=True), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}

    # ---- logprobs -------------------------------------------------------------------------------------
    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def logprobs(self, result: RowResult) -> dict:
        if self.chat:
            content = []
            for step in result.logprobs:
                token = self._token_text(step["token_id"])
                content.append({
                    "token": token, "logprob": _logprob(step["logprob"]), "bytes": list(token.encode("utf-8")),
                    "top_logprobs": [
                        {"token": (text := self._token_text(token_id)), "logprob": _logprob(logprob),
                         "bytes": list(text.encode("utf-8"))}
                        for token_id, logprob in step["top"]
                    ],
                })
            return {"content": content}
        tokens, token_logprobs, top, offsets, offset = [], [], [], [], 0
        for step in result.logprobs:
            token = self._token_text(step["token_id"])
            tokens.append(token)
            token_logprobs.append(_logprob(step["logprob"]))
            top.append({self._token_text(token_id): _logprob(logprob) for token_id, logprob in step["top"]})
            offsets.append(offset)
            offset += len(token)
        return {"tokens": tokens, "token_logprobs": token_logprobs,
                "top_logprobs": top if self.parsed.top_logprobs else None, "text_offset": offsets}
