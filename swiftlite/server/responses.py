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


def _logprob(value: float | None) -> float | None:
    if value is None:
        return None  # the first prompt token of an echo: nothing comes before it
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

    def __init__(self, parsed: ParsedRequest, model_name: str, tokenizer, tool_parser: str | None = None):
        from swiftlite.tool_calls import get_parser

        self.parsed = parsed
        self.chat = parsed.endpoint == "chat"
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        # Tool calls are read from the reply when the request offers tools (and tool_choice is not none).
        self.parser = get_parser(tool_parser) if self.chat and parsed.parses_tools else None
        self.streamed_text: dict[int, str] = {}  # choice -> text received so far (tool parsing holds some back)
        self.sent_chars: dict[int, int] = {}  # choice -> characters of it already sent as content
        self.sent_logprobs: dict[int, int] = {}  # choice -> logprob entries already sent
        self.held_logprobs: dict[int, list] = {}  # choice -> logprobs of deltas held back (tool parsing)
        self.echoed: set[int] = set()

    def _envelope(self, chunk: bool) -> dict:
        if self.chat:
            kind = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model_name}

    def _prompt_text(self, row: int) -> str:
        prompt = self.parsed.prompts[row // self.parsed.rows_per_prompt]
        if prompt.token_ids is not None:
            return self.tokenizer.decode(prompt.token_ids, skip_special_tokens=False)
        return prompt.text

    def _finish_reason(self, result: RowResult, calls: list) -> str:
        if calls and result.finish_reason == "stop":
            return "tool_calls"
        if calls and self.parsed.tool_choice not in ("none", "auto"):
            return "tool_calls"  # a forced call ends the reply as soon as it is complete
        return FINISH_REASONS.get(result.finish_reason, result.finish_reason)

    def _parse(self, text: str) -> tuple[str | None, list]:
        if self.parser is None:
            return text, []
        return self.parser.parse(text)

    # ---- whole responses ------------------------------------------------------------------------------
    def _chosen(self, results: list[RowResult]) -> list[tuple[int, RowResult]]:
        """(row, result) of each answered choice: with best_of, the n likeliest of each prompt's candidates."""
        per_prompt, n = self.parsed.rows_per_prompt, self.parsed.n
        if per_prompt == n:
            return list(enumerate(results))
        chosen = []
        for first in range(0, len(results), per_prompt):
            group = list(enumerate(results[first:first + per_prompt], start=first))

            def mean_logprob(item) -> float:
                steps = item[1].logprobs
                return sum(step["logprob"] for step in steps) / len(steps) if steps else float("-inf")

            chosen += sorted(group, key=mean_logprob, reverse=True)[:n]
        return chosen

    def final(self, results: list[RowResult], prompt_tokens: int) -> dict:
        choices = []
        for index, (row, result) in enumerate(self._chosen(results)):
            choice = {"index": index}
            if self.chat:
                content, calls = self._parse(result.text)
                choice["message"] = {"role": "assistant", "content": content}
                if calls:
                    choice["message"]["tool_calls"] = [call.to_openai() for call in calls]
            else:
                calls = []
                choice["text"] = (self._prompt_text(row) if self.parsed.echo else "") + result.text
            choice["logprobs"] = self.logprobs(result, echo=self.parsed.echo) if self.parsed.logprobs else None
            choice["finish_reason"] = self._finish_reason(result, calls)
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

    def _delta_logprobs(self, index: int, steps: list[dict]) -> dict | None:
        """The logprobs to send with this chunk: its tokens', after those of deltas held back before it."""
        if not self.parsed.logprobs:
            return None
        steps = self.held_logprobs.pop(index, []) + list(steps)
        self.sent_logprobs[index] = self.sent_logprobs.get(index, 0) + len(steps)
        return self._logprobs_of(steps)

    def delta_chunk(self, index: int, text: str) -> dict | None:
        """The chunk for a text delta, or None when there is nothing to send yet (a tool call being held)."""
        steps = getattr(text, "logprobs", [])  # engine.generate.TextDelta carries its tokens' logprobs
        if self.chat:
            if self.parser is not None:
                # Content goes out as it comes until a tool call may have begun; the rest waits for the end.
                received = self.streamed_text.get(index, "") + text
                self.streamed_text[index] = received
                held = self.parser.may_start_call(received)
                upto = len(received) if held is None else held
                text = received[self.sent_chars.get(index, 0):upto]
                if not text:
                    self.held_logprobs.setdefault(index, []).extend(steps)
                    return None
                self.sent_chars[index] = upto
            return self._chunk({"index": index, "delta": {"content": text},
                                "logprobs": self._delta_logprobs(index, steps), "finish_reason": None})
        if self.parsed.echo and index not in self.echoed:
            self.echoed.add(index)
            text = self._prompt_text(index) + text
        return self._chunk({"index": index, "text": text, "logprobs": self._delta_logprobs(index, steps),
                            "finish_reason": None})

    def finish_chunk(self, index: int, result: RowResult) -> dict:
        # The delta holds an empty string rather than nothing, so `print(chunk.choices[0].delta.content)` in
        # ms-swift's client examples prints nothing instead of "None".
        choice = {"index": index}
        calls = []
        if self.chat:
            delta = {"content": ""}
            if self.parser is not None:
                content, calls = self.parser.parse(result.text)
                if calls:
                    delta = {"tool_calls": [call.to_openai(number) for number, call in enumerate(calls)]}
                else:  # no call after all: the held-back text is content
                    delta = {"content": result.text[self.sent_chars.get(index, 0):]}
            choice["delta"] = delta
        else:
            text = ""
            if self.parsed.echo and index not in self.echoed:
                self.echoed.add(index)
                text = self._prompt_text(index)
            choice["text"] = text
        # Logprobs go with each delta; the finish chunk carries those of tokens no delta carried (a stop word's).
        if self.parsed.logprobs:
            steps = result.logprobs[self.sent_logprobs.get(index, 0):]
            if self.parsed.echo and not self.chat:  # the prompt's logprobs, once, with the last chunk
                steps = result.prompt_logprobs + steps
            choice["logprobs"] = self._logprobs_of(steps)
        else:
            choice["logprobs"] = None
        choice["finish_reason"] = self._finish_reason(result, calls)
        return self._chunk(choice)

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict:
        return {**self._envelope(chunk=True), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}

    # ---- logprobs -------------------------------------------------------------------------------------
    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def logprobs(self, result: RowResult, echo: bool = False) -> dict:
        return self._logprobs_of((result.prompt_logprobs if echo else []) + result.logprobs)

    def _logprobs_of(self, steps: list[dict]) -> dict:
        if self.chat:
            content = []
            for step in steps:
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
        for step in steps:
            token = self._token_text(step["token_id"])
            tokens.append(token)
            token_logprobs.append(_logprob(step["logprob"]))
            top.append({self._token_text(token_id): _logprob(logprob) for token_id, logprob in step["top"]}
                       if step["logprob"] is not None else None)
            offsets.append(offset)
            offset += len(token)
        return {"tokens": tokens, "token_logprobs": token_logprobs,
                "top_logprobs": top if self.parsed.top_logprobs else None, "text_offset": offsets}
