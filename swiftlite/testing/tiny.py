"""Tiny random-weight checkpoints of the REAL architectures, for tests, benchmarks and the offline demo.

Each builder uses the real transformers config class at tiny sizes, a byte-level BPE tokenizer trained on a
small corpus that carries the real special tokens (same strings, same order; ids are small because the
vocabulary is small) and the official chat template (fixtures/ copies the official files), and the real
image processor with the official settings except the image size. The result is written with
`save_pretrained`, so it is loaded through exactly the path a user's checkpoint takes.
"""

from __future__ import annotations

import json
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"

# Words the demo and the tests speak: keeping them whole tokens makes tiny models learn quickly.
CORPUS = """\
what is in this image what shape is it what colour is it which shape and colour do you see describe the picture
a red circle a green square a blue triangle a yellow circle a purple square an orange triangle
the image shows a red square on a white background there is one shape in the picture
hello world you are a helpful assistant answer the question in one word yes no
picture image audio sound cat dog flower rose sheep animal how many are there one two three four
""" * 4


def fixture_facts(name: str) -> dict:
    return json.loads((FIXTURES / name / "facts.json").read_text())


def fixture_chat_template(name: str) -> str:
    return (FIXTURES / name / "chat_template.jinja").read_text()


def _train_bpe(special_tokens: list[str], vocab_size: int, metaspace: bool = False):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    if metaspace:
        # SentencePiece-like (Llama): spaces become '▁' and attach to the following word.
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted(set(CORPUS.replace(" ", "▁")) | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;?!'\"()[]{}<>/\\-_=+*#@&%$^~`|▁\n"))
    else:
        # GPT-2 style byte level (Qwen): every byte is representable, so no text is ever unknown.
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False,
                                  special_tokens=special_tokens if metaspace else [])
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer)
    if not metaspace:
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return tokenizer


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _patch_json(path: Path, **updates) -> None:
    data = json.loads(path.read_text())
    data.update(updates)
    _write_json(path, data)


def build_qwen2_vl(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, vision_depth: int = 2,
                   vision_dim: int = 32, intermediate_size: int | None = None, seed: int = 0,
                   max_pixels: int | None = None) -> Path:
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out_dir = Path(out_dir)
    facts = fixture_facts("qwen2-vl")
    specials = [t["content"] for t in facts["tokenizer"]["added_tokens"]]
    backend = _train_bpe(specials, vocab_size=400)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=facts["tokenizer"]["eos_token"], pad_token=facts["tokenizer"]["pad_token"],
        additional_special_tokens=facts["tokenizer"]["additional_special_tokens"], padding_side="left",
        model_max_length=facts["tokenizer"]["model_max_length"],
    )
    tokenizer.chat_template = fixture_chat_template("qwen2-vl")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}

    pre = facts["preprocessor"]
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pre["min_pixels"], max_pixels=max_pixels or pre["max_pixels"], patch_size=pre["patch_size"],
        temporal_patch_size=pre["temporal_patch_size"], merge_size=pre["merge_size"],
        image_mean=pre["image_mean"], image_std=pre["image_std"],
    )
    heads = max(2, hidden_size // 16)
    head_dim = hidden_size // heads
    # mrope_section splits head_dim/2 rotary frequencies into temporal, height, width parts.
    half = head_dim // 2
    section = [half - 2 * (half // 4), half // 4, half // 4]
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size or hidden_size * 2,
            num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=4096, rope_scaling={"type": "mrope", "mrope_section": section},
            tie_word_embeddings=True, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=vision_depth, embed_dim=vision_dim, hidden_size=hidden_size, num_heads=max(2, vision_dim // 16),
            mlp_ratio=2, patch_size=pre["patch_size"], spatial_merge_size=pre["merge_size"],
            temporal_patch_size=pre["temporal_patch_size"], in_channels=3,
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    gen = facts["generation_config"]
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]], do_sample=gen["do_sample"],
        temperature=gen["temperature"], top_p=gen["top_p"], top_k=gen["top_k"],
        repetition_penalty=gen["repetition_penalty"],
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    # Name the classes the way the published checkpoint does, so loaders see what they see on the hub.
    _patch_json(out_dir / "tokenizer_config.json", tokenizer_class="Qwen2Tokenizer")
    _patch_json(out_dir / "preprocessor_config.json", processor_class="Qwen2VLProcessor",
                min_pixels=pre["min_pixels"], max_pixels=max_pixels or pre["max_pixels"])
    return out_dir


def build_llava_1_5(out_dir: str | Path, hidden_size: int = 32, num_layers: int = 2, vision_layers: int = 2,
                    vision_dim: int = 32, image_size: int = 56, intermediate_size: int | None = None,
                    seed: int = 0) -> Path:
    import torch
    from tokenizers import processors
    from transformers import GenerationConfig, LlavaConfig, LlavaForConditionalGeneration, PreTrainedTokenizerFast
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out_dir = Path(out_dir)
    facts = fixture_facts("llava-1.5")
    tok_facts = facts["tokenizer"]
    # <unk>, <s>, </s> come first (ids 0, 1, 2 as in Llama); <image> and <pad> are appended after the vocabulary.
    backend = _train_bpe(["<unk>", "<s>", "</s>"], vocab_size=500, metaspace=True)
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
    heads = max(2, hidden_size // 16)
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
    _patch_json(out_dir / "tokenizer_config.json", tokenizer_class="LlamaTokenizer", add_bos_token=True,
                add_eos_token=False, legacy=False)
    _patch_json(out_dir / "preprocessor_config.json", processor_class="LlavaProcessor")
    processor_config = dict(facts["processor_config"])
    processor_config.pop("source", None)
    _write_json(out_dir / "processor_config.json", processor_config)
    return out_dir


BUILDERS = {"qwen2-vl": build_qwen2_vl, "llava1_5": build_llava_1_5}


def build_tiny_checkpoint(family: str, out_dir: str | Path, **sizes) -> Path:
    """Build the tiny checkpoint of a registered family into `out_dir` (overwritten)."""
    if family not in BUILDERS:
        raise ValueError(f"no tiny checkpoint builder for family {family!r}; have: {', '.join(BUILDERS)}")
    return BUILDERS[family](out_dir, **sizes)
