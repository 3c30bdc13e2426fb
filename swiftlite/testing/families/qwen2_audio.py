"""Tiny Qwen2-Audio checkpoint: real Qwen2AudioConfig (Whisper-style encoder at its real 30-s / 1500-position
input, tiny widths), the Qwen2-Audio tokens and the chat template transformers applies to the checkpoint,
and the official WhisperFeatureExtractor settings (128 mel bins, 16 kHz, padded to 30 s)."""

from __future__ import annotations

from pathlib import Path

from swiftlite.testing.families.qwen_text import qwen_tokenizer
from swiftlite.testing.tiny import fixture_chat_template, fixture_facts, save_checkpoint

FAMILY = "qwen2-audio"


def build(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, audio_layers: int = 2,
          audio_dim: int = 32, intermediate_size: int | None = None, seed: int = 0,
          num_heads: int | None = None) -> Path:
    import torch
    from transformers import (GenerationConfig, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration,
                              WhisperFeatureExtractor)

    out_dir = Path(out_dir)
    facts = fixture_facts("qwen2-audio")
    tokenizer = qwen_tokenizer(facts, fixture_chat_template("qwen2-audio"))
    ids = {t["content"]: tokenizer.convert_tokens_to_ids(t["content"]) for t in facts["tokenizer"]["added_tokens"]}

    pre = facts["preprocessor"]
    feature_extractor = WhisperFeatureExtractor(
        feature_size=pre["feature_size"], sampling_rate=pre["sampling_rate"], hop_length=pre["hop_length"],
        chunk_length=pre["chunk_length"], n_fft=pre["n_fft"], return_attention_mask=pre["return_attention_mask"],
    )
    heads = num_heads or max(2, hidden_size // 16)  # num_heads=2 at hidden 128: head_dim 32 (vLLM's CPU attention)
    config = Qwen2AudioConfig(
        audio_config=dict(
            num_mel_bins=pre["feature_size"], encoder_layers=audio_layers, encoder_attention_heads=max(2, audio_dim // 16),
            encoder_ffn_dim=audio_dim * 2, d_model=audio_dim,
            max_source_positions=pre["chunk_length"] * pre["sampling_rate"] // pre["hop_length"] // 2,
        ),
        text_config=dict(
            model_type="qwen2", vocab_size=len(tokenizer), hidden_size=hidden_size,
            intermediate_size=intermediate_size or hidden_size * 2, num_hidden_layers=num_layers,
            num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=4096,
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        audio_token_index=ids["<|AUDIO|>"],
    )
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
    )
    save_checkpoint(out_dir, model, tokenizer, feature_extractor, "Qwen2Tokenizer", "Qwen2AudioProcessor")
    return out_dir
