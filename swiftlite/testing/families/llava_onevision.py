"""Tiny LLaVA-OneVision checkpoint: real LlavaOnevisionConfig with SigLIP vision and Qwen2 text configs.

The anyres grid is the official 6x6 grid of tiles scaled to the tiny tile size, so the anyres_max_9
pooling rule is exercised by images larger than about nine tiles.
"""

from __future__ import annotations

from pathlib import Path

from swiftlite.testing.tiny import INIT_RANGE, fixture_chat_template, fixture_facts, patch_json, train_bpe, write_json

FAMILY = "llava_onevision"


def build(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, vision_layers: int = 2,
          vision_dim: int = 32, image_size: int = 28, intermediate_size: int | None = None, seed: int = 0,
          num_heads: int | None = None) -> Path:
    import torch
    from transformers import (GenerationConfig, LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              PreTrainedTokenizerFast)
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    out_dir = Path(out_dir)
    facts = fixture_facts("llava-onevision")
    tok = facts["tokenizer"]
    specials = [t["content"] for t in tok["added_tokens"]]  # <|endoftext|> <|im_start|> <|im_end|> <image> <video>
    backend = train_bpe(specials, vocab_size=400)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=tok["eos_token"], pad_token=tok["pad_token"], padding_side="left",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    tokenizer.chat_template = fixture_chat_template("llava-onevision")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}

    pre = facts["preprocessor"]
    official_tile = pre["size"]["height"]
    # The official grid: 1..6 tiles of 384 px in each direction; ours the same multiples of the tiny tile.
    pinpoints = [[rows * image_size, cols * image_size] for rows in range(1, 7) for cols in range(1, 7)]
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_grid_pinpoints=pinpoints,
        image_mean=pre["image_mean"], image_std=pre["image_std"], do_pad=True,
    )
    patch_size = facts["config"]["vision_config"]["patch_size"]
    tile_tokens = (image_size // patch_size) ** 2  # 729 at 384 px
    assert (official_tile // patch_size) ** 2 == pre["num_image_tokens"]
    heads = num_heads or max(2, hidden_size // 16)  # num_heads=2 at hidden 128: head_dim 32 (vLLM's CPU attention)
    config = LlavaOnevisionConfig(
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=vision_dim, intermediate_size=vision_dim * 2,
            num_hidden_layers=vision_layers, num_attention_heads=max(2, vision_dim // 16), image_size=image_size,
            patch_size=patch_size, vision_use_head=False,
        ),
        text_config=dict(
            model_type="qwen2", vocab_size=len(tokenizer), hidden_size=hidden_size,
            intermediate_size=intermediate_size or hidden_size * 2, num_hidden_layers=num_layers,
            num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=4096,
            initializer_range=INIT_RANGE,
            tie_word_embeddings=False, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        image_token_index=ids["<image>"], video_token_index=ids["<video>"], image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1, vision_feature_select_strategy=pre["vision_feature_select_strategy"],
        vision_aspect_ratio=pre["vision_aspect_ratio"], tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                                               eos_token_id=ids["<|im_end|>"])
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    patch_json(out_dir / "tokenizer_config.json", tokenizer_class="Qwen2Tokenizer")
    patch_json(out_dir / "preprocessor_config.json", processor_class="LlavaOnevisionProcessor")
    write_json(out_dir / "processor_config.json", {
        "processor_class": "LlavaOnevisionProcessor", "num_image_tokens": tile_tokens,
        "vision_feature_select_strategy": pre["vision_feature_select_strategy"],
        "vision_aspect_ratio": pre["vision_aspect_ratio"], "image_token": "<image>", "video_token": "<video>",
    })
    return out_dir
