"""Tiny MiniCPM-V 4.6 checkpoint: real MiniCPMV4_6Config (SigLIP-style NaViT ViT with the window-attention
merger inserted after one layer, the 2x2 MLP merger, and a Qwen3.5 text model mixing linear-attention and
full-attention layers), the MiniCPM-V tokens on a Qwen vocabulary, a ChatML chat template, and the PIL
MiniCPM-V 4.6 image processor with the official settings except a smaller slice resolution.

Not confirmed by any fixture (see fixtures/minicpm-v/facts.json "unconfirmed"): the hub's chat template (ours,
chat_template_4_6.jinja, is reconstructed from the processor: one `<|image_pad|>` per image part, ChatML turns,
the documented `enable_thinking` switch) and the order of the added tokens after `<|im_end|>`. What is
confirmed: the text model is Qwen3.5 (eos ids 248044 `<|endoftext|>` and 248046 `<|im_end|>`, two apart, as
here), and the processor's token names (tokenizer.image_token etc.) and expansion rule.
"""

from __future__ import annotations

from pathlib import Path

from swiftlite.testing.tiny import FIXTURES, patch_json, train_bpe

FAMILY = "minicpm_v"

# Qwen3.5's special tokens in vocabulary order (<|endoftext|> = 248044 ... on the hub), then MiniCPM-V's own.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]
MINICPM_TOKENS = ["<image>", "</image>", "<slice>", "</slice>", "<image_id>", "</image_id>", "<ref>", "</ref>",
                  "<box>", "</box>", "<quad>", "</quad>", "<point>", "</point>"]
PLAIN_TOKENS = ["<think>", "</think>"]
# What MiniCPMV4_6Processor reads from the tokenizer (tokenizer.image_token, tokenizer.image_start_token, ...).
NAMED_TOKENS = {
    "image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
    "image_start_token": "<image>", "image_end_token": "</image>",
    "slice_start_token": "<slice>", "slice_end_token": "</slice>",
    "image_id_start_token": "<image_id>", "image_id_end_token": "</image_id>",
}


def chat_template() -> str:
    return (FIXTURES / "minicpm-v" / "chat_template_4_6.jinja").read_text()


def minicpm_tokenizer(vocab_size: int = 400):
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    specials = QWEN_SPECIAL_TOKENS + MINICPM_TOKENS
    backend = train_bpe(specials, vocab_size=vocab_size)
    backend.add_tokens([AddedToken(token, special=False, normalized=False) for token in PLAIN_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left",
        model_max_length=262144, extra_special_tokens=dict(NAMED_TOKENS),
    )
    tokenizer.chat_template = chat_template()
    return tokenizer


def build(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, vision_depth: int = 2,
          vision_dim: int = 32, intermediate_size: int | None = None, seed: int = 0,
          scale_resolution: int = 112, max_slice_nums: int = 4, version: str = "4.6") -> Path:
    """`version` "4.7" builds MiniCPM-V 4.7 instead (same layout, plus the canvas M-RoPE marker ids)."""
    import torch
    import transformers
    from transformers import GenerationConfig
    from transformers.models.minicpmv4_6.image_processing_pil_minicpmv4_6 import MiniCPMV4_6ImageProcessorPil

    if version not in ("4.6", "4.7"):
        raise ValueError(f"MiniCPM-V version {version!r}: expected 4.6 or 4.7")
    suffix = version.replace(".", "_")

    out_dir = Path(out_dir)
    tokenizer = minicpm_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS + MINICPM_TOKENS}

    patch_size = 14
    # Official settings (slice mode, 16x downsampling, image ids, ImageNet-standard normalisation) except the
    # slice resolution (448 on the hub) and the number of slices (9).
    image_processor = MiniCPMV4_6ImageProcessorPil(scale_resolution=scale_resolution, max_slice_nums=max_slice_nums,
                                                   patch_size=patch_size)
    heads = 2
    # MiniCPM-V 4.7 lays images out on a canvas with M-RoPE: its config carries the marker ids the model
    # finds crops by (the conversion script resolves them from the tokenizer, "\n" included).
    canvas = {} if version == "4.6" else dict(
        image_start_id=ids["<image>"], image_end_id=ids["</image>"], slice_start_id=ids["<slice>"],
        slice_end_id=ids["</slice>"], newline_id=tokenizer.encode("\n", add_special_tokens=False)[0],
    )
    config = getattr(transformers, f"MiniCPMV{suffix}Config")(
        text_config=dict(
            model_type="qwen3_5_text", vocab_size=len(tokenizer), hidden_size=hidden_size,
            intermediate_size=intermediate_size or hidden_size * 2, num_hidden_layers=num_layers,
            num_attention_heads=heads, num_key_value_heads=1, head_dim=32,
            # As the hub's Qwen3.5: a quarter of each head rotates, its frequencies interleaved over
            # temporal/height/width (11/11/10 of 32 on the hub; 2/1/1 of 4 here), used by 4.7's canvas M-RoPE.
            rope_parameters={"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                             "mrope_section": [2, 1, 1], "mrope_interleaved": True},
            linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
            # Qwen3.5 interleaves Gated DeltaNet (linear attention) layers with full-attention ones: keep both.
            layer_types=(["linear_attention"] * (num_layers - 1) + ["full_attention"]),
            max_position_embeddings=4096, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=vision_dim, intermediate_size=vision_dim * 2, num_hidden_layers=vision_depth,
            num_attention_heads=2, patch_size=patch_size, image_size=patch_size * 8,
        ),
        insert_layer_id=0,  # the window-attention merger runs after the first ViT layer
        image_size=scale_resolution, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        **canvas,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, f"MiniCPMV{suffix}ForConditionalGeneration")(config)
    model.generation_config = GenerationConfig(pad_token_id=ids["<|endoftext|>"],
                                               eos_token_id=[ids["<|endoftext|>"], ids["<|im_end|>"]])
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    patch_json(out_dir / "tokenizer_config.json", tokenizer_class="Qwen2Tokenizer")
    # The hub names the torchvision class; transformers maps it to the PIL one when torchvision is absent.
    patch_json(out_dir / "preprocessor_config.json", processor_class=f"MiniCPMV{suffix}Processor",
               image_processor_type="MiniCPMV4_6ImageProcessor")
    return out_dir
