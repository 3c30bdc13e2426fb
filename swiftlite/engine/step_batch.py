"""The step engine's batched decoding: every running row's next token from ONE forward pass.

A row that joins is prefilled alone, with the model's own forward (its images, M-RoPE positions, audio: the
model does all of it), which gives its KV cache and the logits of its first token. From then on it is a row of
the decode batch: one transformers `DynamicCache` holding every row's keys and values, left-padded to a common
length, with a 2-D attention mask that hides each row's padding. Each step feeds every row's last token and
appends one column; a row that joins is padded to the batch's length (or the batch to its length) and
concatenated; a row that ends is index-selected out, and the columns that only padding is left in are cut.

Why this and not transformers' continuous batching: see step_loop.py. Why a padded dense cache and not pages:
it is what every family's attention already takes (a 2-D mask and a DynamicCache), so the batched path needs no
kernel of its own, and a row's numbers are those of the row alone (masked keys get exactly zero weight).

Positions are passed explicitly, per row: the number of tokens in the row's cache (padding excluded), plus
the row's M-RoPE offset for Qwen2-VL, Qwen2.5-VL, Qwen3-VL and GLM-4V (the `rope_deltas` its prefill computed,
read off the model right after that forward: the model keeps only the last call's), as 3 equal components.
PaliGemma counts positions from 1.

Families whose cache is not one full-attention tensor per layer keep the per-row path of step_loop.py
(`per_row_reason` says why): Gemma 3 (sliding-window layers), Mllama (cross-attention cache, text rows apart
from image rows) and any model whose config declares non-full-attention layers.
"""

from __future__ import annotations

from swiftlite.engine.generate import prepare_rows

PER_ROW_FAMILIES = {"mllama": "its cross-attention layers keep a cache of their own (the image's)",
                    "gemma3": "its sliding-window layers keep a cache that rolls"}
POSITION_OFFSET = {"paligemma": 1}  # the position of a prompt's first token


def cache_keyword(model) -> str:
    """The forward's name for the KV cache: `cache` since transformers 5.20, `past_key_values` before (vLLM's
    pins keep 5.19, and users may run either). Asked of the transformers model under a peft wrapper, whose own
    forward passes everything on as **kwargs."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def per_row_reason(model) -> str | None:
    """Why this model cannot decode in one padded batch (None: it can)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in PER_ROW_FAMILIES:
        return f"{model_type}: {PER_ROW_FAMILIES[model_type]}"
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = set(getattr(text_config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"}:
        return f"{model_type}: layers of kind {', '.join(sorted(layer_types - {'full_attention'}))}"
    return None


class DecodeBatch:
    """The running rows' shared KV cache and attention mask (padding on the left)."""

    def __init__(self, cache_keyword: str):
        self.cache_keyword = cache_keyword  # the forward's name for the cache (cache_keyword(), asked once)
        self.rows: list = []
        self.cache = None  # a DynamicCache, batch dimension = self.rows
        self.mask = None  # (rows, cache length) long: 1 where a row has a token

    def add(self, row, cache) -> None:
        import torch
        import torch.nn.functional as F

        length = cache.layers[0].keys.shape[-2]
        row_mask = torch.ones(1, length, dtype=torch.long, device=cache.layers[0].keys.device)
        if self.cache is None:
            self.rows, self.cache, self.mask = [row], cache, row_mask
            return
        have = self.mask.shape[1]
        pad_batch, pad_row = max(0, length - have), max(0, have - length)

        def joined(batch, one):
            return torch.cat([F.pad(batch, (0, 0, pad_batch, 0)), F.pad(one, (0, 0, pad_row, 0))])

        # Every new tensor first, then the swap: a failed allocation (out of memory) leaves the batch as it was.
        layers = [(joined(layer.keys, joining.keys), joined(layer.values, joining.values))
                  for layer, joining in zip(self.cache.layers, cache.layers)]
        mask = torch.cat([F.pad(self.mask, (pad_batch, 0)), F.pad(row_mask, (pad_row, 0))])
        for layer, (keys, values) in zip(self.cache.layers, layers):
            layer.keys, layer.values = keys, values
        self.mask = mask
        self.rows.append(row)

    def keep(self, rows: list) -> None:
        """Only `rows` (a subset of self.rows) stay; columns of padding only are cut."""
        import torch

        if not rows:
            self.rows, self.cache, self.mask = [], None, None
            return
        index = torch.tensor([self.rows.index(row) for row in rows], device=self.mask.device)
        mask = self.mask.index_select(0, index)
        start = int(mask.any(dim=0).nonzero()[0])  # the first column any remaining row has a token in
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self.rows, self.mask = list(rows), mask[:, start:]

    def forward(self, model, mrope: bool, extra: dict):
        """One decode step of every row: the logits (rows, vocab) of each row's next token."""
        import torch

        device = self.mask.device
        ids = torch.tensor([[row.batched.last] for row in self.rows], device=device)
        mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=torch.long, device=device)], dim=1)
        positions = torch.tensor([[row.batched.position] for row in self.rows], device=device)
        if mrope:
            positions = positions[None].expand(3, -1, -1)
        try:
            extra = {**extra, self.cache_keyword: self.cache}
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                           **extra).logits[:, -1].float()
        except BaseException:
            # The layers before the failure appended this step's keys and values: cut them, so that the rows
            # that go on find every layer as long as their mask.
            length = self.mask.shape[1]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, :length], layer.values[:, :, :length]
            raise
        self.mask = mask
        return logits


class BatchedRow:
    """A row's own decoding state on the batched path (the per-row path keeps it inside `generate`)."""

    def __init__(self, prompt, max_new_tokens: int, offset: int, penalised: bool):
        import torch

        # Prompt plus generated tokens, for the repetition penalty (RowSampler reads the row's input ids); a row
        # without one is handed its prompt only (nothing reads it), which saves a tensor write per step.
        self.history = torch.empty(1, prompt.shape[1] + max_new_tokens + 1, dtype=torch.long, device=prompt.device)
        self.history[0, :prompt.shape[1]] = prompt[0]
        self.penalised = penalised
        self.length = self.cached = prompt.shape[1]  # tokens in history; in the KV cache (padding excluded)
        self.offset = offset  # position of the first token, plus the row's M-RoPE delta
        self.last = 0  # the token the next decode step feeds

    @property
    def position(self) -> int:
        return self.cached + self.offset

    def input_ids(self):
        return self.history[:, :self.length]

    def append(self, token: int) -> None:
        if self.penalised:
            self.history[0, self.length] = token
            self.length += 1
        self.last = token


def prefill(engine, row, on_delta, cancelled):
    """Row alone: its tracker and sampler, its prompt's forward. Returns its cache and first-token logits."""
    import torch
    from transformers.cache_utils import DynamicCache

    params = row.params
    batch, tracker, sampler = prepare_rows(engine.model, engine.template, [row.encoded], [params], engine.stop_ids,
                                           on_delta, cancelled)
    prompt = batch["input_ids"]
    tracker.seen_prompt = True  # no generate() to hand the prompt over first
    row.tracker, row.sampler = tracker, sampler
    for module, name in engine.state_holders:  # a text row must not take the last image row's M-RoPE delta
        setattr(module, name, None)
    cache = DynamicCache(config=engine.inner.config)
    with torch.inference_mode():
        logits = engine.model(**batch, **{engine.batch.cache_keyword: cache}, use_cache=True,
                              logits_to_keep=1).logits[:, -1].float()
    delta = next((value for module, name in engine.state_holders
                  if (value := getattr(module, name)) is not None), None)
    offset = POSITION_OFFSET.get(getattr(engine.inner.config, "model_type", None), 0)
    offset += int(delta.view(-1)[0]) if delta is not None else 0
    row.batched = BatchedRow(prompt, params.max_new_tokens, offset, params.repetition_penalty not in (None, 1.0))
    return cache, logits


def take_token(row, logits) -> None:
    """The row's sampling of one step (its RowSampler, as engine.generate runs it), handed to its tracker."""
    state = row.batched
    chosen = row.sampler(state.input_ids(), logits)
    token = int(chosen[0].argmax())
    row.tracker.put([token])
    state.append(token)
