"""Tiny SmolVLM checkpoint (Idefics3 layout, as SmolVLM-256M-Instruct): real Idefics3Config, SmolVLM tokens.

Tiles are 32 px instead of 512 and images are first fitted into 128 px instead of 2048 (the same 4:1 ratio),
with 8-px patches and pixel-shuffle 2: 4 `<image>` tokens per tile instead of 64. The split-image rule
(rows x cols tiles + a global view) runs unchanged.
"""

from __future__ import annotations

from pathlib import Path

from swiftlite.testing.tiny import INIT_RANGE, fixture_chat_template, fixture_facts, patch_json, train_bpe, write_json

FAMILY = "smolvlm"


def build(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, vision_layers: int = 2,
          vision_dim: int = 32, image_size: int = 32, patch_size: int = 8, scale_factor: int = 2,
          intermediate_size: int | None = None, seed: int = 0,
          num_heads: int | None = None) -> Path:
    import torch
    from transformers import GenerationConfig, Idefics3Config, Idefics3ForConditionalGeneration, PreTrainedTokenizerFast
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    out_dir = Path(out_dir)
    facts = fixture_facts("smolvlm")
    tok = facts["tokenizer"]
    # SmolLM2's <|endoftext|> <|im_start|> <|im_end|>, then the Idefics3 tokens in their order (49189...49279).
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>", "<global-img>"]
    specials += [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)] + ["<end_of_utterance>"]
    backend = train_bpe(specials, vocab_size=400)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=tok["bos_token"], eos_token=tok["eos_token"], pad_token=tok["pad_token"],
        unk_token="<|endoftext|>", padding_side="left",
        additional_special_tokens=["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
    )
    tokenizer.chat_template = fixture_chat_template("smolvlm")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}

    pre = facts["preprocessor"]
    scale = image_size / pre["max_image_size"]["longest_edge"]
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": int(pre["size"]["longest_edge"] * scale)},
        max_image_size={"longest_edge": image_size}, do_image_splitting=pre["do_image_splitting"],
        resample=pre["resample"], image_mean=pre["image_mean"], image_std=pre["image_std"],
    )
    tokens_per_tile = int((image_size // patch_size) ** 2 / scale_factor**2)  # 64 at 512 px, patch 16, scale 4
    heads = num_heads or max(2, hidden_size // 16)  # num_heads=2 at hidden 128: head_dim 32 (vLLM's CPU attention)
    config = Idefics3Config(
        vision_config=dict(
            hidden_size=vision_dim, intermediate_size=vision_dim * 2, num_hidden_layers=vision_layers,
            num_attention_heads=max(2, vision_dim // 16), image_size=image_size, patch_size=patch_size,
        ),
        text_config=dict(
            model_type="llama", vocab_size=len(tokenizer), hidden_size=hidden_size,
            intermediate_size=intermediate_size or hidden_size * 2, num_hidden_layers=num_layers,
            num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096, rms_norm_eps=1e-5,
            initializer_range=INIT_RANGE,
            bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<end_of_utterance>"], pad_token_id=ids["<|im_end|>"],
            tie_word_embeddings=False,
        ),
        image_token_id=ids["<image>"], scale_factor=scale_factor, pad_token_id=ids["<|im_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=ids["<|im_start|>"], pad_token_id=ids["<|im_end|>"],
                                               eos_token_id=ids["<end_of_utterance>"])
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    patch_json(out_dir / "tokenizer_config.json", tokenizer_class="GPT2Tokenizer")
    patch_json(out_dir / "preprocessor_config.json", processor_class="Idefics3Processor")
    write_json(out_dir / "processor_config.json", {"processor_class": "Idefics3Processor",
                                                  "image_seq_len": tokens_per_tile})
    return out_dir
