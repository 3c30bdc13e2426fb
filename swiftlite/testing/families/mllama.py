"""Tiny Llama 3.2 Vision (Mllama) checkpoint: real MllamaConfig (tiled vision encoder + a Llama text model with
a cross-attention layer), Llama 3 special tokens with `<|image|>` last (outside the LM head's vocabulary, as in
the real model), the official chat template, and the Mllama image processor with 28-px tiles (560 official).
"""

from __future__ import annotations

from pathlib import Path

from swiftlite.testing.tiny import INIT_RANGE, fixture_chat_template, fixture_facts, patch_json, train_bpe

FAMILY = "mllama"


def build(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, vision_layers: int = 2,
          vision_dim: int = 32, tile_size: int = 28, intermediate_size: int | None = None, seed: int = 0) -> Path:
    import torch
    from tokenizers import processors
    from transformers import (GenerationConfig, MllamaConfig, MllamaForConditionalGeneration,
                              PreTrainedTokenizerFast)
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    out_dir = Path(out_dir)
    facts = fixture_facts("mllama")
    tok = facts["tokenizer"]
    specials = [t["content"] for t in sorted(tok["added_tokens"], key=lambda t: t["id"])]  # <|image|> is last
    backend = train_bpe(specials, vocab_size=500)
    bos = tok["bos_token"]
    bos_id = backend.token_to_id(bos)
    # The Llama 3 tokenizer starts every text with <|begin_of_text|>.
    backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, bos_id)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=tok["eos_token"],
                                        pad_token=tok["pad_token"], padding_side="left")
    tokenizer.chat_template = fixture_chat_template("mllama")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}

    pre = facts["preprocessor"]
    max_tiles = pre["max_image_tiles"]
    image_processor = MllamaImageProcessorPil(
        size={"height": tile_size, "width": tile_size}, max_image_tiles=max_tiles, image_mean=pre["image_mean"],
        image_std=pre["image_std"], do_pad=pre["do_pad"], rescale_factor=pre["rescale_factor"],
    )
    config = MllamaConfig(
        vision_config=dict(
            hidden_size=vision_dim, intermediate_size=vision_dim * 2, num_hidden_layers=vision_layers,
            num_global_layers=1, attention_heads=2, image_size=tile_size, patch_size=14, max_num_tiles=max_tiles,
            intermediate_layers_indices=[0], vision_output_dim=vision_dim * 2,
        ),
        text_config=dict(
            # The LM head covers the text tokens; <|image|> (the last id) only has an embedding row (+8 rows).
            vocab_size=ids["<|image|>"], hidden_size=hidden_size,
            intermediate_size=intermediate_size or hidden_size * 2, num_hidden_layers=num_layers,
            num_attention_heads=2, num_key_value_heads=1, cross_attention_layers=[num_layers - 1],
            max_position_embeddings=4096, bos_token_id=bos_id, eos_token_id=ids["<|end_of_text|>"],
            pad_token_id=ids["<|finetune_right_pad_id|>"], initializer_range=INIT_RANGE,
        ),
        image_token_index=ids["<|image|>"],
    )
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(config)
    # Zero-initialised gates would shut the images out (tanh(0) = 0): open them as trained checkpoints have them,
    # so the image features really reach the text and tests can see them.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("_gate", ".gate")):
                parameter.fill_(0.5)
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id, pad_token_id=ids["<|finetune_right_pad_id|>"],
        eos_token_id=[ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    patch_json(out_dir / "preprocessor_config.json", processor_class="MllamaProcessor")
    return out_dir
