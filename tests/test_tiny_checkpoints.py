"""The offline test checkpoints are faithful: real config classes, real special tokens, real processors."""

from __future__ import annotations

import json

from swiftlite.testing.tiny import fixture_facts


def test_qwen2_vl_checkpoint_carries_the_real_facts(qwen2_vl_dir):
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    facts = fixture_facts("qwen2-vl")
    config = AutoConfig.from_pretrained(qwen2_vl_dir)
    assert type(config).__name__ == "Qwen2VLConfig"
    tokenizer = AutoTokenizer.from_pretrained(qwen2_vl_dir)
    for token in facts["tokenizer"]["added_tokens"]:
        ids = tokenizer.encode(token["content"], add_special_tokens=False)
        assert len(ids) == 1, token["content"]  # each special token is one token, never split
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert tokenizer.chat_template.strip() == (qwen2_vl_dir / "chat_template.jinja").read_text().strip()
    processor = AutoImageProcessor.from_pretrained(qwen2_vl_dir)
    assert "Qwen2VLImageProcessor" in type(processor).__name__
    assert processor.merge_size == 2 and processor.patch_size == 14
    saved = json.loads((qwen2_vl_dir / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "Qwen2Tokenizer"


def test_llava_checkpoint_carries_the_real_facts(llava_dir):
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    config = AutoConfig.from_pretrained(llava_dir)
    assert type(config).__name__ == "LlavaConfig" and config.vision_config.model_type == "clip_vision_model"
    tokenizer = AutoTokenizer.from_pretrained(llava_dir)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]  # Llama's layout
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert tokenizer("hi").input_ids[0] == tokenizer.bos_token_id  # add_bos_token, as llava-hf
    processor = AutoProcessor.from_pretrained(llava_dir)
    assert type(processor).__name__ == "LlavaProcessor"
    assert processor.vision_feature_select_strategy == "default"


def test_builds_are_deterministic(tmp_path):
    from safetensors.torch import load_file

    from swiftlite.testing import build_tiny_checkpoint

    first = build_tiny_checkpoint("llava1_5", tmp_path / "a", seed=3)
    second = build_tiny_checkpoint("llava1_5", tmp_path / "b", seed=3)
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (first / "tokenizer.json").read_text() == (second / "tokenizer.json").read_text()
