"""Tiny Qwen2.5 (text-only) checkpoint: real Qwen2Config, the Qwen2.5 added tokens in their real order, ChatML.

Also home of `qwen_tokenizer`, the byte-level Qwen tokenizer every Qwen builder of this group shares.
The chat template is NOT the hub Qwen2.5 text (see fixtures/qwen2.5/facts.json): it is the ChatML text path
of the Qwen2-VL template, the same token structure.
"""

from __future__ import annotations

from pathlib import Path

from swiftlite.testing.tiny import INIT_RANGE, fixture_chat_template, fixture_facts, patch_json, train_bpe

FAMILY = "qwen2_5"


def qwen_tokenizer(facts: dict, chat_template: str, vocab_size: int = 400):
    """Byte-level BPE with the checkpoint's added tokens in their real order (special ones flagged special)."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    added = facts["tokenizer"]["added_tokens"]
    assert [t["id"] for t in added] == sorted(t["id"] for t in added)
    # The special tokens come first in every Qwen vocabulary; the plain added ones (tool/fim/think) follow.
    specials = [t["content"] for t in added if t["special"]]
    plain = [t["content"] for t in added if not t["special"]]
    assert [t["content"] for t in added] == specials + plain
    backend = train_bpe(specials, vocab_size=vocab_size)
    backend.add_tokens([AddedToken(token, special=False, normalized=False) for token in plain])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=facts["tokenizer"]["eos_token"], pad_token=facts["tokenizer"]["pad_token"],
        additional_special_tokens=[t for t in specials if t != "<|endoftext|>"], padding_side="left",
        model_max_length=facts["tokenizer"].get("model_max_length", 32768),
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_causal_lm(out_dir: Path, fixture: str, config_class: str, model_class: str, hidden_size: int,
                    num_layers: int, intermediate_size: int | None, seed: int, num_heads: int | None = None,
                    **config_extra) -> Path:
    import torch
    import transformers
    from transformers import GenerationConfig

    out_dir = Path(out_dir)
    facts = fixture_facts(fixture)
    tokenizer = qwen_tokenizer(facts, fixture_chat_template(fixture))
    endoftext, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    heads = num_heads or max(2, hidden_size // 16)  # num_heads=2 at hidden 128: head_dim 32 (vLLM's CPU attention)
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=endoftext, eos_token_id=im_end,
        initializer_range=INIT_RANGE,
        pad_token_id=endoftext, **config_extra,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config)
    model.generation_config = GenerationConfig(bos_token_id=endoftext, pad_token_id=endoftext,
                                               eos_token_id=[im_end, endoftext])
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    patch_json(out_dir / "tokenizer_config.json", tokenizer_class="Qwen2Tokenizer")
    return out_dir


def build(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, intermediate_size: int | None = None,
          seed: int = 0, num_heads: int | None = None) -> Path:
    return build_causal_lm(Path(out_dir), "qwen2.5", "Qwen2Config", "Qwen2ForCausalLM", hidden_size, num_layers,
                           intermediate_size, seed, num_heads=num_heads)
