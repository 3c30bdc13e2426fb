"""Tiny Gemma 3 checkpoint: real Gemma3Config (SigLIP vision + Gemma 3 text), Gemma special tokens, chat template.

Images are 56 px instead of 896: 4x4 patches pooled to 2x2 = 4 soft tokens (the official 64x64 patches pool
to 16x16 = 256), so the projector's pooling and the processor's expansion run unchanged.
"""

from __future__ import annotations

from pathlib import Path

from swiftlite.testing.tiny import fixture_chat_template, fixture_facts, patch_json, train_bpe, write_json

FAMILY = "gemma3"


def build(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, vision_layers: int = 2,
          vision_dim: int = 32, image_size: int = 56, intermediate_size: int | None = None, seed: int = 0,
          newline_tokens: bool = False) -> Path:
    import torch
    from tokenizers import AddedToken, processors
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, GenerationConfig, PreTrainedTokenizerFast
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    out_dir = Path(out_dir)
    facts = fixture_facts("gemma3")
    tok = facts["tokenizer"]
    added = tok["added_tokens"]
    # <pad> <eos> <bos> <unk> are ids 0-3 and the turn tokens follow; the image tokens come after the vocabulary,
    # as in Gemma's (their real ids 255999/256000/262144 are also past the text pieces).
    head = [t["content"] for t in added if t["id"] < 1000]
    tail = [t["content"] for t in added if t["id"] >= 1000]
    backend = train_bpe(head, vocab_size=500, metaspace=True)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tail])
    if newline_tokens:  # Gemma's vocabulary has them, and vLLM's Gemma 3 processor looks them up (KeyError without)
        backend.add_tokens([AddedToken("\n" * n, normalized=False) for n in (2, 3, 4)])
    bos_id = head.index(tok["bos_token"])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{tok['bos_token']} $A", pair=f"{tok['bos_token']} $A {tok['bos_token']} $B",
        special_tokens=[(tok["bos_token"], bos_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=tok["bos_token"], eos_token=tok["eos_token"], pad_token=tok["pad_token"],
        unk_token=tok["unk_token"], padding_side="left", extra_special_tokens=tok["extra_special_tokens"],
    )
    tokenizer.chat_template = fixture_chat_template("gemma3")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in head + tail}

    pre = facts["preprocessor"]
    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size}, resample=pre["resample"], image_mean=pre["image_mean"],
        image_std=pre["image_std"], do_pan_and_scan=pre["do_pan_and_scan"],
        pan_and_scan_min_crop_size=pre["pan_and_scan_min_crop_size"],
        pan_and_scan_max_num_crops=pre["pan_and_scan_max_num_crops"],
        pan_and_scan_min_ratio_to_activate=pre["pan_and_scan_min_ratio_to_activate"],
    )
    patch_size = facts["config"]["vision_config"]["patch_size"]
    tokens_per_image = ((image_size // patch_size) // 2) ** 2  # 256 at 896 px: 64x64 patches pooled 4x4
    heads, head_dim = 2, max(8, hidden_size // 2)
    config = Gemma3Config(
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=vision_dim, intermediate_size=vision_dim * 2,
            num_hidden_layers=vision_layers, num_attention_heads=max(2, vision_dim // 16), image_size=image_size,
            patch_size=patch_size, vision_use_head=False,
        ),
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size or hidden_size * 2,
            num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=1, head_dim=head_dim,
            query_pre_attn_scalar=head_dim, sliding_window=64, max_position_embeddings=4096,
            layer_types=["sliding_attention"] * (num_layers - 1) + ["full_attention"],
            pad_token_id=ids["<pad>"], eos_token_id=ids["<eos>"], bos_token_id=ids["<bos>"],
        ),
        mm_tokens_per_image=tokens_per_image, image_token_index=ids["<image_soft_token>"],
        boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=ids["<bos>"], pad_token_id=ids["<pad>"],
                                               eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]])
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    patch_json(out_dir / "tokenizer_config.json", tokenizer_class="GemmaTokenizer", add_bos_token=True,
               add_eos_token=False)
    patch_json(out_dir / "preprocessor_config.json", processor_class="Gemma3Processor")
    write_json(out_dir / "processor_config.json", {"processor_class": "Gemma3Processor",
                                                  "image_seq_length": tokens_per_image})
    return out_dir
