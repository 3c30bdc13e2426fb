"""Tiny LLaVA-1.5 checkpoint (llava-hf layout): real LlavaConfig with CLIP vision and Llama text configs."""

from __future__ import annotations

from pathlib import Path

from swiftlite.testing.tiny import fixture_chat_template, fixture_facts, patch_json, train_bpe, write_json

FAMILY = "llava1_5"


def build(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, vision_layers: int = 2,
                    vision_dim: int = 32, image_size: int = 56, intermediate_size: int | None = None,
                    seed: int = 0, num_heads: int | None = None) -> Path:
    import torch
    from tokenizers import processors
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, PreTrainedTokenizerFast
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out_dir = Path(out_dir)
    facts = fixture_facts("llava-1.5")
    tok_facts = facts["tokenizer"]
    # <unk>, <s>, </s> come first (ids 0, 1, 2 as in Llama); <image> and <pad> are appended after the vocabulary.
    backend = train_bpe(["<unk>", "<s>", "</s>"], vocab_size=500, metaspace=True)
    from tokenizers import AddedToken

    backend.add_special_tokens([AddedToken("<image>", special=True, normalized=False),
                                AddedToken("<pad>", special=True, normalized=False)])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=tok_facts["bos_token"], eos_token=tok_facts["eos_token"],
        unk_token=tok_facts["unk_token"], pad_token=tok_facts["pad_token"], padding_side="left",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.chat_template = fixture_chat_template("llava-1.5")
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    pad_id = tokenizer.convert_tokens_to_ids("<pad>")

    pre = facts["preprocessor"]
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=True, resample=pre["resample"], image_mean=pre["image_mean"], image_std=pre["image_std"],
    )
    heads = num_heads or max(2, hidden_size // 16)  # num_heads=2 at hidden 128: head_dim 32, as vLLM's CPU attention needs
    vision_heads = max(2, vision_dim // 16)
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=vision_dim, intermediate_size=vision_dim * 2,
            num_hidden_layers=vision_layers, num_attention_heads=vision_heads, image_size=image_size,
            patch_size=14, projection_dim=vision_dim,
        ),
        text_config=dict(
            model_type="llama", vocab_size=len(tokenizer), hidden_size=hidden_size,
            intermediate_size=intermediate_size or hidden_size * 2, num_hidden_layers=num_layers,
            num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
            rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=pad_id,
        ),
        image_token_index=image_id, pad_token_id=pad_id, projector_hidden_act="gelu", vision_feature_layer=-2,
        vision_feature_select_strategy="default", tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=pad_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    patch_json(out_dir / "tokenizer_config.json", tokenizer_class="LlamaTokenizer", add_bos_token=True,
                add_eos_token=False, legacy=False)
    patch_json(out_dir / "preprocessor_config.json", processor_class="LlavaProcessor")
    processor_config = dict(facts["processor_config"])
    processor_config.pop("source", None)
    write_json(out_dir / "processor_config.json", processor_config)
    return out_dir
