"""Tiny Qwen2.5-VL checkpoint: real Qwen2_5_VLConfig (window-attention ViT), Qwen2.5-VL tokens and template,
the PIL Qwen2-VL image processor with the official settings."""

from __future__ import annotations

from pathlib import Path

from swiftlite.testing.families.qwen_text import qwen_tokenizer
from swiftlite.testing.tiny import INIT_RANGE, fixture_chat_template, fixture_facts, save_checkpoint

FAMILY = "qwen2_5-vl"


def mrope_section(head_dim: int) -> list[int]:
    # head_dim/2 rotary frequencies split into temporal, height and width parts (16/24/24 of 64 on the hub).
    half = head_dim // 2
    return [half - 2 * (half // 4), half // 4, half // 4]


def build(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, vision_depth: int = 2,
          vision_dim: int = 32, intermediate_size: int | None = None, seed: int = 0,
          max_pixels: int | None = None,
          num_heads: int | None = None) -> Path:
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out_dir = Path(out_dir)
    facts = fixture_facts("qwen2.5-vl")
    tokenizer = qwen_tokenizer(facts, fixture_chat_template("qwen2.5-vl"))
    ids = {t["content"]: tokenizer.convert_tokens_to_ids(t["content"]) for t in facts["tokenizer"]["added_tokens"]}

    pre = facts["preprocessor"]
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pre["min_pixels"], max_pixels=max_pixels or pre["max_pixels"], patch_size=pre["patch_size"],
        temporal_patch_size=pre["temporal_patch_size"], merge_size=pre["merge_size"],
        image_mean=pre["image_mean"], image_std=pre["image_std"],
    )
    heads = num_heads or max(2, hidden_size // 16)  # num_heads=2 at hidden 128: head_dim 32 (vLLM's CPU attention)
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size or hidden_size * 2,
            num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=4096, initializer_range=INIT_RANGE,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                             "mrope_section": mrope_section(hidden_size // heads)},
            tie_word_embeddings=False, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_dim, intermediate_size=vision_dim * 2,
            num_heads=max(2, vision_dim // 16), out_hidden_size=hidden_size, patch_size=pre["patch_size"],
            spatial_merge_size=pre["merge_size"], temporal_patch_size=pre["temporal_patch_size"], in_channels=3,
            # Window attention in every block but the last, full attention there (as blocks 7/15/23/31 on the hub).
            window_size=112, fullatt_block_indexes=[vision_depth - 1],
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
    )
    save_checkpoint(out_dir, model, tokenizer, image_processor, "Qwen2Tokenizer", pre["processor_class"],
                    min_pixels=pre["min_pixels"], max_pixels=max_pixels or pre["max_pixels"])
    return out_dir
