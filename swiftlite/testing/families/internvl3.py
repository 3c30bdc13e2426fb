"""Tiny InternVL3 (-hf) checkpoint: real InternVLConfig (InternViT + Qwen2), InternVL tokens, GotOcr2 tiles.

Tiles are 56 px instead of 448; with the official 14-px patches and 0.5 pixel-shuffle a tile gives 4 tokens
instead of 256, and the official tile grid rule (1..12 tiles + thumbnail) runs unchanged.
"""

from __future__ import annotations

from pathlib import Path

from swiftlite.testing.tiny import fixture_chat_template, fixture_facts, patch_json, train_bpe, write_json

FAMILY = "internvl3"


def build(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, vision_layers: int = 2,
          vision_dim: int = 32, image_size: int = 56, intermediate_size: int | None = None, seed: int = 0,
          num_heads: int | None = None) -> Path:
    import torch
    from transformers import GenerationConfig, InternVLConfig, InternVLForConditionalGeneration, PreTrainedTokenizerFast
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    out_dir = Path(out_dir)
    facts = fixture_facts("internvl3")
    tok = facts["tokenizer"]
    specials = [t["content"] for t in tok["added_tokens"]]
    backend = train_bpe(specials, vocab_size=400)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=tok["eos_token"], pad_token=tok["pad_token"], padding_side="left",
        model_max_length=tok["model_max_length"], extra_special_tokens=tok["extra_special_tokens"],
    )
    tokenizer.chat_template = fixture_chat_template("internvl3")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}

    pre = facts["preprocessor"]
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size}, crop_to_patches=pre["crop_to_patches"],
        min_patches=pre["min_patches"], max_patches=pre["max_patches"], image_mean=pre["image_mean"],
        image_std=pre["image_std"], do_rescale=pre["do_rescale"], rescale_factor=pre["rescale_factor"],
        do_normalize=pre["do_normalize"], do_convert_rgb=pre["do_convert_rgb"],
    )
    cfg = facts["config"]
    patch_size = cfg["vision_config"]["patch_size"][0]
    tokens_per_tile = int((image_size // patch_size) ** 2 * cfg["downsample_ratio"] ** 2)  # 256 at 448 px
    heads = num_heads or max(2, hidden_size // 16)  # num_heads=2 at hidden 128: head_dim 32 (vLLM's CPU attention)
    config = InternVLConfig(
        vision_config=dict(
            hidden_size=vision_dim, intermediate_size=vision_dim * 2, num_hidden_layers=vision_layers,
            num_attention_heads=max(2, vision_dim // 16), image_size=[image_size, image_size],
            patch_size=[patch_size, patch_size],
        ),
        text_config=dict(
            model_type="qwen2", vocab_size=len(tokenizer), hidden_size=hidden_size,
            intermediate_size=intermediate_size or hidden_size * 2, num_hidden_layers=num_layers,
            num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=4096,
            tie_word_embeddings=False, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        image_token_id=ids["<IMG_CONTEXT>"], image_seq_length=tokens_per_tile,
        downsample_ratio=cfg["downsample_ratio"], vision_feature_layer=-1, vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
                                               eos_token_id=ids["<|im_end|>"])
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    patch_json(out_dir / "tokenizer_config.json", tokenizer_class="Qwen2Tokenizer")
    patch_json(out_dir / "preprocessor_config.json", processor_class="InternVLProcessor")
    write_json(out_dir / "processor_config.json", {"processor_class": "InternVLProcessor",
                                                  "image_seq_length": tokens_per_tile})
    return out_dir
