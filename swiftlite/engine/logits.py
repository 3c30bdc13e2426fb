"""Per-row logit shaping beyond temperature/top-k/top-p: OpenAI's logit_bias and presence/frequency penalties,
and grammar-constrained decoding (structured outputs, forced tool calls).

`RowSampler._sample` calls `RowLogits.shape` on one row's logits before it samples, and `RowLogits.advance`
with the token it chose. Both engines (the static batch of `generate()` and a per-step loop) sample through
`RowSampler`, so these settings work in both.

Grammars come from llguidance (Microsoft's guidance project, Rust, MIT): it compiles a JSON schema or a Lark
grammar against the tokenizer's vocabulary once and then computes each step's allowed-token mask in tens of
microseconds on the CPU, with no dependency on torch, triton or a compiler at install time (xgrammar pulls in
triton and a TVM runtime; outlines precompiles a state machine per schema, seconds for a large one). vLLM and
SGLang ship it as one of their structured-output backends.
"""

from __future__ import annotations

import threading
import weakref

_TOKENIZERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()


class GrammarError(ValueError):
    """A grammar or JSON schema that llguidance cannot compile (a client's mistake: a 400)."""


def grammar_tokenizer(tokenizer, vocab_size: int | None = None, stop_token_ids: list[int] | None = None):
    """llguidance's view of a Hugging Face tokenizer, built once per tokenizer (about 10 ms to 1 s)."""
    import llguidance.hf

    with _TOKENIZERS_LOCK:
        cached = _TOKENIZERS.get(tokenizer)
        key = (vocab_size, tuple(stop_token_ids or ()))
        if cached is not None and cached[0] == key:
            return cached[1]
        n_vocab = max(vocab_size or 0, len(tokenizer))
        eos = list(stop_token_ids) if stop_token_ids else None
        lltokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=eos[0] if eos else None)
        _TOKENIZERS[tokenizer] = (key, lltokenizer)
        return lltokenizer


def json_schema_grammar(schema: dict | None) -> str:
    """A grammar for one JSON value matching `schema` (None: any JSON object, OpenAI's json_object mode)."""
    import llguidance

    schema = {"type": "object"} if schema is None else schema
    try:
        # whitespace_flexible False: compact JSON, so a random model cannot spend its tokens on blanks.
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    except (ValueError, TypeError) as error:
        raise GrammarError(f"the JSON schema is not usable: {error}") from None


def lark_grammar(lark: str) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_lark(lark)


def check_grammar(grammar: str, tokenizer=None) -> None:
    """Raise GrammarError when llguidance refuses the grammar (checked at the door, before queueing)."""
    import llguidance

    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if is_error:
        raise GrammarError(f"the grammar is not usable: {messages[0] if messages else 'unknown error'}")


class RowLogits:
    """One row's logit_bias, penalties and grammar matcher."""

    def __init__(self, params, tokenizer, vocab_size: int):
        self.params = params
        self.matcher = None
        self.mask = None
        self.bias = None  # logit_bias as a dense vector (_bias_vector)
        if params.grammar:
            import llguidance

            lltokenizer = grammar_tokenizer(tokenizer, vocab_size, params.stop_token_ids)
            self.vocab_size = lltokenizer.vocab_size
            self.matcher = llguidance.LLMatcher(lltokenizer, params.grammar, log_level=0)
            if self.matcher.is_error():
                raise GrammarError(f"the grammar is not usable: {self.matcher.get_error()}")

    @staticmethod
    def needed(params) -> bool:
        return bool(params.grammar or params.logit_bias or params.presence_penalty or params.frequency_penalty)

    def shape(self, logits, generated: list[int]):
        """logits (1-D, float32) -> logits with bias, penalties and the grammar's mask applied (a new tensor)."""
        import torch

        p = self.params
        logits = logits.clone()
        if p.logit_bias:
            logits += self._bias_vector(logits)
        if (p.presence_penalty or p.frequency_penalty) and generated:
            # As OpenAI defines them: over the tokens generated so far, minus presence once per token seen and
            # frequency once per occurrence.
            counts = torch.bincount(torch.tensor(generated, dtype=torch.long), minlength=logits.numel())
            counts = counts[: logits.numel()].to(logits.device, logits.dtype)
            logits -= p.presence_penalty * (counts > 0).to(logits.dtype) + p.frequency_penalty * counts
        if self.matcher is not None:
            logits = logits.masked_fill(~self._allowed(logits.numel(), logits.device), float("-inf"))
        return logits

    def _bias_vector(self, logits):
        """logit_bias as one dense vector of the logits' width, built at the row's first step and kept: a bias
        over the whole vocabulary (150k ids, allowed at the door) rebuilt from the dict at every step took
        about 0.4 s of the engine thread per step, a delay every other row of the batch waited out."""
        import torch

        if self.bias is None or self.bias.shape != logits.shape or self.bias.device != logits.device:
            ids = torch.tensor(list(self.params.logit_bias.keys()), dtype=torch.long)
            values = torch.tensor(list(self.params.logit_bias.values()), dtype=logits.dtype)
            in_range = ids < logits.numel()  # checked against the vocabulary at the door; padding ids pass
            bias = torch.zeros(logits.numel(), dtype=logits.dtype)
            bias[ids[in_range]] = values[in_range]
            self.bias = bias.to(logits.device)
        return self.bias

    def _allowed(self, size: int, device):
        """The grammar's allowed tokens as a boolean vector; where the grammar is done, only the row's stop tokens.

        `size` is the logits' width (the model's padded vocabulary), which may differ from the tokenizer's."""
        import torch

        stop_ids = [t for t in self.params.stop_token_ids if t < size]
        allowed = torch.zeros(size, dtype=torch.bool)
        if not (self.matcher.is_stopped() or self.matcher.is_error()):
            import llguidance.torch as lltorch

            if self.mask is None:
                self.mask = lltorch.allocate_token_bitmask(1, self.vocab_size)
            lltorch.fill_next_token_bitmask(self.matcher, self.mask)
            # Bit k of word w allows token 32w + k: unpack the little-endian bytes (about 0.1 ms for 150k tokens,
            # where shifting a torch tensor per bit takes over 100 ms).
            import numpy

            bits = numpy.unpackbits(self.mask[0].numpy().view(numpy.uint8), bitorder="little")
            width = min(size, self.vocab_size)
            allowed[:width] = torch.from_numpy(bits[:width].astype(bool))
            if not self.matcher.is_accepting():
                allowed[stop_ids] = False  # the value is not complete yet: no stopping (eos may be in the mask)
        if self.matcher.is_accepting() or self.matcher.is_stopped():
            allowed[stop_ids] = True
        return allowed.to(device)

    def advance(self, token: int) -> None:
        if self.matcher is not None and not self.matcher.is_stopped() and token not in self.params.stop_token_ids:
            self.matcher.consume_token(token)
