"""Tiny GLM-4.1V checkpoint: real Glm4vConfig (14-px patch ViT with 2-D RoPE and interpolated learned position
embeddings, a 2x2 conv downsample and the gated merger, GLM-4 language model with M-RoPE), the GLM-4 special
tokens in their real order, the official chat template, and the PIL GLM-4.1V image processor with the
library's settings except a smaller maximum pixel count."""

from __future__ import annotations

from pathlib import Path

from swiftlite.testing.tiny import fixture_chat_template, fixture_facts, patch_json, train_bpe

FAMILY = "glm4_1v"

# The GLM-4 vocabulary's special tokens 151329..151344 in id order. facts.json lists the ones the template and
# config use; the three gaps ([MASK], [sMASK], <eop>) are the GLM-4 tokenizer's, kept so the order is real.
GLM4_SPECIAL_TOKENS = [
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>", "<|assistant|>",
    "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
    "<|image|>", "<|video|>",
]


def glm4v_tokenizer(facts: dict, chat_template: str, vocab_size: int = 400):
    from transformers import PreTrainedTokenizerFast

    listed = [t["content"] for t in facts["tokenizer"]["added_tokens"]]
    assert [t for t in GLM4_SPECIAL_TOKENS if t in listed] == listed
    # No post-processor: the chat template itself writes the `[gMASK]<sop>` prefix.
    backend = train_bpe(GLM4_SPECIAL_TOKENS, vocab_size=vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=facts["tokenizer"]["eos_token"], pad_token=facts["tokenizer"]["pad_token"],
        additional_special_tokens=GLM4_SPECIAL_TOKENS[1:], padding_side="left", model_max_length=65536,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, vision_depth: int = 2,
          vision_dim: int = 32, intermediate_size: int | None = None, seed: int = 0,
          max_pixels: int = 28 * 28 * 64,
          num_heads: int | None = None) -> Path:
    import torch
    from transformers import GenerationConfig, Glm4vConfig, Glm4vForConditionalGeneration
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    out_dir = Path(out_dir)
    facts = fixture_facts("glm4v")
    tokenizer = glm4v_tokenizer(facts, fixture_chat_template("glm4v"))
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in GLM4_SPECIAL_TOKENS}

    pre = facts["preprocessor"]
    image_processor = Glm4vImageProcessorPil(
        size={"shortest_edge": pre["size"]["shortest_edge"], "longest_edge": max_pixels},
        patch_size=pre["patch_size"], temporal_patch_size=pre["temporal_patch_size"], merge_size=pre["merge_size"],
        image_mean=pre["image_mean"], image_std=pre["image_std"], resample=pre["resample"],
    )
    heads = num_heads or max(2, hidden_size // 16)  # num_heads=2 at hidden 128: head_dim 32 (vLLM's CPU attention)
    head_dim = hidden_size // heads
    # GLM-4.1V rotates half of each head (partial_rotary_factor 0.5): mrope_section splits those frequencies
    # over temporal/height/width as 8/12/12 of 32 on the hub.
    quarter = head_dim // 4
    section = [quarter - 2 * (quarter * 3 // 8), quarter * 3 // 8, quarter * 3 // 8]
    config = Glm4vConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size or hidden_size * 2,
            num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=4096, pad_token_id=ids["<|endoftext|>"],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section,
                             "partial_rotary_factor": 0.5},
        ),
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_dim, intermediate_size=hidden_size * 2,
            num_heads=max(2, vision_dim // 16), out_hidden_size=hidden_size, patch_size=pre["patch_size"],
            spatial_merge_size=pre["merge_size"], temporal_patch_size=pre["temporal_patch_size"], in_channels=3,
            image_size=4 * pre["patch_size"],  # a 4x4 grid of learned positions, interpolated per image
        ),
        image_token_id=ids["<|image|>"], video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"], image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"], video_end_token_id=ids["<|end_of_video|>"],
    )
    torch.manual_seed(seed)
    model = Glm4vForConditionalGeneration(config)
    # The hub generation_config stops at <|endoftext|>, <|user|> and <|observation|>: the chat template closes
    # no turn, so a reply ends where the model starts the next user (or tool) turn.
    model.generation_config = GenerationConfig(
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    # The hub names the torchvision class; transformers maps it to the PIL one when torchvision is absent.
    patch_json(out_dir / "preprocessor_config.json", processor_class="Glm4vProcessor",
               image_processor_type=pre["image_processor_type"])
    return out_dir
