"""LLaVA-OneVision: anyres_max_9 token counts and tiles equal LlavaOnevisionProcessor's; train, generate, prefixes."""

from __future__ import annotations


import pytest
import torch

from family_checks import (BATTERY, GREEN, RED, check_generate_batch, check_generation_prompt, check_labels,
                           check_prefixes, check_tiny_checkpoint, check_train_step, official_processor)
from swiftlite.conversation import Conversation
from swiftlite.models import FAMILIES, get_model_type
from swiftlite.models.loading import load_model, load_tokenizer
from swiftlite.templates import get_template


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    return build_tiny_checkpoint("llava_onevision", tmp_path_factory.mktemp("llava_onevision") / "tiny")


@pytest.fixture(scope="module")
def bound(checkpoint):
    tokenizer = load_tokenizer(checkpoint)
    return get_template("llava-onevision-qwen", tokenizer), official_processor(checkpoint)


def test_registry_entries():
    for name in ("llava-onevision-qwen2-0_5b-ov", "llava-onevision-qwen2-7b-ov"):
        spec = get_model_type(name)
        assert spec.family is FAMILIES["llava_onevision"] and spec.template_type == "llava-onevision-qwen"
        assert spec.hf_id.startswith("llava-hf/llava-onevision-qwen2-") and spec.hf_id.endswith("-ov-hf")


@pytest.mark.parametrize("case", list(BATTERY))
def test_generation_prompt_matches_official_processor(bound, case):
    template, processor = bound
    check_generation_prompt(template, processor, case, media_keys=("pixel_values", "image_sizes", "batch_num_images"))


def test_token_count_rule_matches_processor_on_many_sizes(bound):
    # Large images take many tiles, so the anyres_max_9 pooling branch (ratio > 1.1) is exercised too.
    template, processor = bound
    image_id = template.token_id("<image>")
    seen = set()
    for size in [(10, 10), (28, 28), (29, 80), (80, 29), (57, 55), (200, 90), (33, 130), (170, 168), (300, 301)]:
        image = RED.resize(size)
        ours = template.encode(Conversation([{"role": "user", "content": "<image>hi"}], [image]))
        official = processor(text=["<|im_start|>user <image>\nhi<|im_end|>"], images=[image], return_tensors="pt")
        count = official["input_ids"][0].tolist().count(image_id)
        assert ours["input_ids"].count(image_id) == count, size
        seen.add(count)
    assert len(seen) >= 5


def test_no_system_prompt_renders_no_default(bound):
    template, _ = bound
    text = template.tokenizer.decode(template.encode(BATTERY["text only"])["input_ids"])
    assert text == "<|im_start|>user \nhello world<|im_end|><|im_start|>assistant\n"


def test_labels_cover_exactly_the_assistant_replies(bound):
    template, processor = bound
    check_labels(template, processor)


def test_train_step_generate_and_prefixes(checkpoint, bound):
    template, _ = bound
    model = load_model(checkpoint, FAMILIES["llava_onevision"], torch.float32, device="cpu")
    check_train_step(model, template, FAMILIES["llava_onevision"])
    check_generate_batch(model, template, GREEN)
    check_prefixes(model, FAMILIES["llava_onevision"])


def test_tiny_checkpoint_carries_the_real_facts(checkpoint):
    special_tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    check_tiny_checkpoint(checkpoint, "LlavaOnevisionConfig", special_tokens, image_token="<image>")
