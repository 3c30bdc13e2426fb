"""Tiny Qwen3 (text-only, dense) checkpoint: real Qwen3Config (explicit head_dim, q/k norms), Qwen3 tokens.

The chat template is the Qwen3-VL Instruct one (fixtures/qwen3/facts.json): Qwen3's ChatML without a
default system prompt; the hub's hybrid-thinking text is not in our offline sources.
"""

from __future__ import annotations

from pathlib import Path

from swiftlite.testing.families.qwen_text import build_causal_lm

FAMILY = "qwen3"


def build(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, intermediate_size: int | None = None,
          seed: int = 0) -> Path:
    heads = max(2, hidden_size // 16)
    return build_causal_lm(Path(out_dir), "qwen3", "Qwen3Config", "Qwen3ForCausalLM", hidden_size, num_layers,
                           intermediate_size, seed, head_dim=hidden_size // heads)
