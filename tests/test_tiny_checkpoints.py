"""The offline test checkpoints are faithful: real config classes, real special tokens, real processors."""

from __future__ import annotations

import json

import pytest

from swiftlite.testing.tiny import discover_builders, fixture_chat_template, fixture_facts


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
    assert tokenizer.chat_template.strip() == fixture_chat_template("qwen2-vl").strip()  # the official file
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


PROMPTS = ("hello world", "what shape is it? describe the picture of a red circle")


@pytest.mark.parametrize("family_name", sorted(discover_builders()))
def test_outputs_depend_on_the_input(family_name, tmp_path):
    # A degenerate tiny model (same tokens for every prompt) would make every "batched equals alone",
    # "stream equals non-stream" and "client equals server" comparison unable to fail.
    import torch

    from swiftlite.conversation import Conversation
    from swiftlite.engine.generate import SamplingParams, generate
    from swiftlite.models.loading import load_model, load_tokenizer, resolve_model
    from swiftlite.templates import get_template
    from swiftlite.testing import build_tiny_checkpoint

    resolved = resolve_model(model_id_or_path=str(build_tiny_checkpoint(family_name, tmp_path / family_name)))
    template = get_template(resolved.template_type, load_tokenizer(resolved.model_dir, resolved.family))
    model = load_model(resolved.model_dir, resolved.family, torch.float32, device="cpu")
    rows = [template.encode(Conversation([{"role": "user", "content": prompt}])) if template.chat_template
            else template.encode_raw(prompt) for prompt in PROMPTS]
    params = SamplingParams(max_new_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    first, second = (generate(model, template, [row], [params])[0] for row in rows)
    assert first.token_ids != second.token_ids
    assert len(set(first.token_ids)) > 1  # not one token repeated
    assert first.logprobs[0]["top"] != second.logprobs[0]["top"]  # the first step already depends on the prompt


@pytest.mark.parametrize("family_name", ["qwen2-vl", "llava1_5", "qwen2_5"])
def test_a_padding_mistake_is_visible(family_name, tmp_path):
    # Left-padded, the shorter row's next-token logprobs equal the row alone; without the attention mask
    # (padding attended to) they do not. On the old degenerate checkpoints both were the same.
    import torch

    from swiftlite.conversation import Conversation
    from swiftlite.models.loading import load_model, load_tokenizer, resolve_model
    from swiftlite.templates import get_template
    from swiftlite.testing import build_tiny_checkpoint

    resolved = resolve_model(model_id_or_path=str(build_tiny_checkpoint(family_name, tmp_path / family_name)))
    template = get_template(resolved.template_type, load_tokenizer(resolved.model_dir, resolved.family))
    model = load_model(resolved.model_dir, resolved.family, torch.float32, device="cpu")
    short, long = (template.encode(Conversation([{"role": "user", "content": prompt}])) for prompt in PROMPTS)
    batch = template.collate([short, long], padding_side="left")

    def last_logprobs(inputs):
        with torch.no_grad():
            return torch.log_softmax(model(**inputs).logits[:, -1].float(), dim=-1)

    alone = last_logprobs(template.collate([short], padding_side="left"))[0]
    batched = last_logprobs(batch)[0]
    unmasked = last_logprobs({k: v for k, v in batch.items() if k != "attention_mask"})[0]
    assert (batched - alone).abs().max() < 1e-4
    assert (unmasked - alone).abs().max() > 1e-2
