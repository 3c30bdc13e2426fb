"""Tiny PaliGemma checkpoint: real PaliGemmaConfig (SigLIP vision + Gemma text), Gemma special tokens with the
<loc>/<seg> tokens and `<image>` after the vocabulary (as in the real tokenizer), SigLIP image processor.

Images are 56 px instead of 224: 4x4 patches of 14 px = 16 tokens per image (the official 16x16 = 256), and
the processor's image_seq_length says so, as the hub preprocessor_config does.
"""

from __future__ import annotations

from pathlib import Path

from swiftlite.testing.tiny import fixture_facts, patch_json, train_bpe

FAMILY = "paligemma"

LOC_SEG = [f"<loc{i:0>4}>" for i in range(1024)] + [f"<seg{i:0>3}>" for i in range(128)]


def build(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, vision_layers: int = 2,
          vision_dim: int = 32, image_size: int = 56, intermediate_size: int | None = None, seed: int = 0) -> Path:
    import torch
    from tokenizers import AddedToken, normalizers, pre_tokenizers, processors
    from transformers import (GenerationConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration,
                              PreTrainedTokenizerFast)
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    out_dir = Path(out_dir)
    facts = fixture_facts("paligemma")
    tok = facts["tokenizer"]
    # <pad> <eos> <bos> <unk> are ids 0-3 as in Gemma; then the text pieces, the <loc>/<seg> tokens and <image>.
    backend = train_bpe(["<pad>", "<eos>", "<bos>", "<unk>"], vocab_size=500, metaspace=True)
    # Gemma's tokenizer adds no prefix space: spaces just become '▁' (so a suffix tokenized on its own, as the
    # processor's text_pair is, gives the same pieces as inside the whole text).
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    backend.add_tokens([AddedToken(t, normalized=False) for t in LOC_SEG])
    backend.add_special_tokens([AddedToken("<image>", special=True, normalized=False)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=tok["bos_token"], eos_token=tok["eos_token"], pad_token=tok["pad_token"],
        unk_token="<unk>", padding_side="left", extra_special_tokens={"image_token": "<image>"},
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<pad>", "<eos>", "<bos>", "<image>")}
    # Gemma's tokenizer starts every text with <bos> (the PaliGemma processor turns that off and places it itself).
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", ids["<bos>"])])

    pre = facts["preprocessor"]
    patch_size = facts["config"]["vision_config"]["patch_size"]
    tokens_per_image = (image_size // patch_size) ** 2
    image_processor = SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, resample=pre["resample"], image_mean=pre["image_mean"],
        image_std=pre["image_std"], rescale_factor=pre["rescale_factor"],
    )
    heads = 2
    config = PaliGemmaConfig(
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=vision_dim, intermediate_size=vision_dim * 2,
            num_hidden_layers=vision_layers, num_attention_heads=max(2, vision_dim // 16), image_size=image_size,
            patch_size=patch_size, projection_dim=hidden_size, num_image_tokens=tokens_per_image,
            vision_use_head=False,
        ),
        text_config=dict(
            model_type="gemma", vocab_size=len(tokenizer), hidden_size=hidden_size,
            intermediate_size=intermediate_size or hidden_size * 2, num_hidden_layers=num_layers,
            num_attention_heads=heads, num_key_value_heads=1, head_dim=max(8, hidden_size // heads),
            max_position_embeddings=4096, pad_token_id=ids["<pad>"], eos_token_id=ids["<eos>"],
            bos_token_id=ids["<bos>"], tie_word_embeddings=False,
        ),
        image_token_index=ids["<image>"], projection_dim=hidden_size, hidden_size=hidden_size,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"],
                                               pad_token_id=ids["<pad>"])
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    patch_json(out_dir / "tokenizer_config.json", tokenizer_class="GemmaTokenizer", add_bos_token=True,
               add_eos_token=False)
    patch_json(out_dir / "preprocessor_config.json", processor_class="PaliGemmaProcessor",
               image_seq_length=tokens_per_image)
    return out_dir
