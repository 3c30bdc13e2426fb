"""The shapes an OpenAI request takes on its way to the engine: parsed (ParsedRequest), then encoded
(EncodedRequest), under the server's RequestLimits.

The way through the server/ modules, in order:
  json_body.py           the body as JSON: bounded depth, valid Unicode
  chat_request.py        /v1/chat/completions body -> ParsedRequest (a Conversation)
  completion_request.py  /v1/completions body -> ParsedRequest (RawPrompts)
    fields.py            one field's type and range checks, the known and the refused fields
    sampling_fields.py   the sampling fields both endpoints share (temperature, seed, stop, logit_bias ...)
    structured_output.py response_format and tools: checked, and compiled to a grammar
  encoding.py            ParsedRequest -> EncodedRequest: media loaded, template rendered, max_tokens settled
  responses.py           the engine's output -> OpenAI response and chunk shapes

Parsing is cheap and runs on the event loop; it rejects bad fields with a 400 that names the field. Encoding
loads the images and renders the chat template, so it runs in the request handler's thread pool and rejects
bad media and too-long prompts, still before anything is queued for the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from swiftlite.engine.generate import SamplingParams


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
