"""Tiny Qwen2-VL checkpoint: real Qwen2VLConfig, Qwen2 special tokens and chat template, PIL image processor."""

from __future__ import annotations

from pathlib import Path

from swiftlite.testing.tiny import INIT_RANGE, fixture_chat_template, fixture_facts, train_bpe, save_checkpoint

FAMILY = "qwen2-vl"


def build(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, vision_depth: int = 2,
                   vision_dim: int = 32, intermediate_size: int | None = None, seed: int = 0,
                   max_pixels: int | None = None, tie_word_embeddings: bool = False,
          initializer_range: float = INIT_RANGE, num_heads: int | None = None) -> Path:
    # Qwen2-VL-2B ties its output head to the embeddings; 7B and 72B do not (tie_word_embeddings=False).
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out_dir = Path(out_dir)
    facts = fixture_facts("qwen2-vl")
    specials = [t["content"] for t in facts["tokenizer"]["added_tokens"]]
    backend = train_bpe(specials, vocab_size=400)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=facts["tokenizer"]["eos_token"], pad_token=facts["tokenizer"]["pad_token"],
        additional_special_tokens=facts["tokenizer"]["additional_special_tokens"], padding_side="left",
        model_max_length=facts["tokenizer"]["model_max_length"],
    )
    tokenizer.chat_template = fixture_chat_template("qwen2-vl")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}

    pre = facts["preprocessor"]
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pre["min_pixels"], max_pixels=max_pixels or pre["max_pixels"], patch_size=pre["patch_size"],
        temporal_patch_size=pre["temporal_patch_size"], merge_size=pre["merge_size"],
        image_mean=pre["image_mean"], image_std=pre["image_std"],
    )
    heads = num_heads or max(2, hidden_size // 16)  # num_heads=2 at hidden 128: head_dim 32, as vLLM's CPU attention needs
    head_dim = hidden_size // heads
    # mrope_section splits head_dim/2 rotary frequencies into temporal, height, width parts.
    half = head_dim // 2
    section = [half - 2 * (half // 4), half // 4, half // 4]
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size or hidden_size * 2,
            num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
            initializer_range=initializer_range, max_position_embeddings=4096, rope_scaling={"type": "mrope", "mrope_section": section},
            tie_word_embeddings=tie_word_embeddings, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=vision_depth, embed_dim=vision_dim, hidden_size=hidden_size, num_heads=max(2, vision_dim // 16),
            mlp_ratio=2, patch_size=pre["patch_size"], spatial_merge_size=pre["merge_size"],
            temporal_patch_size=pre["temporal_patch_size"], in_channels=3,
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    gen = facts["generation_config"]
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], do_sample=gen["do_sample"],
        temperature=gen["temperature"], top_p=gen["top_p"], top_k=gen["top_k"],
        repetition_penalty=gen["repetition_penalty"],
    )
    return save_checkpoint(out_dir, model, tokenizer, image_processor, "Qwen2Tokenizer", "Qwen2VLProcessor",
                           min_pixels=pre["min_pixels"], max_pixels=max_pixels or pre["max_pixels"])
