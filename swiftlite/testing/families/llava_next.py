"""Tiny LLaVA-NeXT checkpoint (llava-hf v1.6 layout): real LlavaNextConfig, CLIP vision, Mistral (or Vicuna) text.

The anyres grid is the official one scaled to the tiny tile size: the official pinpoints are multiples of
336 px, ours the same multiples of `image_size`, so the tiling and token-count rule run unchanged.
"""

from __future__ import annotations

from pathlib import Path

from swiftlite.testing.tiny import fixture_chat_template, fixture_facts, patch_json, train_bpe, write_json

FAMILY = "llava_next"


def build(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, vision_layers: int = 2,
          vision_dim: int = 32, image_size: int = 28, intermediate_size: int | None = None, seed: int = 0,
          variant: str = "mistral",
          num_heads: int | None = None) -> Path:
    """variant "mistral" (llava-v1.6-mistral: `[INST]` template, Mistral LLM) or "vicuna" (LLaVA-1.5 template,
    Llama LLM), the two chat formats of the published v1.6 checkpoints."""
    import torch
    from tokenizers import AddedToken, processors
    from transformers import (GenerationConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              PreTrainedTokenizerFast)
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    if variant not in ("mistral", "vicuna"):
        raise ValueError(f"variant must be 'mistral' or 'vicuna', not {variant!r}")
    out_dir = Path(out_dir)
    facts = fixture_facts("llava-next")
    tok_facts = facts["tokenizer"]
    # <unk>, <s>, </s> are ids 0, 1, 2 (Llama/Mistral SentencePiece); <image> is appended after the vocabulary.
    backend = train_bpe(["<unk>", "<s>", "</s>"], vocab_size=500, metaspace=True)
    backend.add_special_tokens([AddedToken("<image>", special=True, normalized=False)])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=tok_facts["bos_token"], eos_token=tok_facts["eos_token"],
        unk_token=tok_facts["unk_token"], pad_token=tok_facts["unk_token"], padding_side="left",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.chat_template = fixture_chat_template("llava-next" if variant == "mistral" else "llava-1.5")
    image_id = tokenizer.convert_tokens_to_ids("<image>")

    pre = facts["preprocessor"]
    scale = image_size / pre["crop_size"]["height"]
    pinpoints = [[int(h * scale), int(w * scale)] for h, w in pre["image_grid_pinpoints"]]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints, image_mean=pre["image_mean"], image_std=pre["image_std"],
        do_pad=pre["do_pad"], do_center_crop=True,
    )
    heads = num_heads or max(2, hidden_size // 16)  # num_heads=2 at hidden 128: head_dim 32 (vLLM's CPU attention)
    text_config = dict(
        model_type="mistral" if variant == "mistral" else "llama", vocab_size=len(tokenizer),
        hidden_size=hidden_size, intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    if variant == "mistral":
        text_config["sliding_window"] = None
    config = LlavaNextConfig(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=vision_dim, intermediate_size=vision_dim * 2,
            num_hidden_layers=vision_layers, num_attention_heads=max(2, vision_dim // 16), image_size=image_size,
            patch_size=facts["processor_config"]["patch_size"], projection_dim=vision_dim,
        ),
        text_config=text_config, image_token_index=image_id, image_grid_pinpoints=pinpoints,
        projector_hidden_act="gelu", vision_feature_layer=facts["config"]["vision_feature_layer"],
        vision_feature_select_strategy=facts["config"]["vision_feature_select_strategy"], tie_word_embeddings=False,
        image_seq_length=(image_size // 14) ** 2,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    patch_json(out_dir / "tokenizer_config.json", tokenizer_class="LlamaTokenizer", add_bos_token=True,
               add_eos_token=False, legacy=False)
    patch_json(out_dir / "preprocessor_config.json", processor_class="LlavaNextProcessor")
    write_json(out_dir / "processor_config.json", dict(facts["processor_config"], processor_class="LlavaNextProcessor"))
    return out_dir
