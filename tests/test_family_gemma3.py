"""Gemma 3: image sequences and token_type_ids equal Gemma3Processor's; train, generate, prefixes."""

from __future__ import annotations

import pytest
import torch

from family_checks import (BATTERY, GREEN, check_generate_batch, check_generation_prompt, check_labels,
                           check_prefixes, check_tiny_checkpoint, check_train_step, training_batch)
from swiftlite.models import FAMILIES, get_model_type
from swiftlite.models.loading import load_model, load_tokenizer
from swiftlite.templates import get_template


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    return build_tiny_checkpoint("gemma3", tmp_path_factory.mktemp("gemma3") / "tiny")


@pytest.fixture(scope="module")
def bound(checkpoint):
    from transformers import AutoProcessor

    return get_template("gemma3-vision", load_tokenizer(checkpoint)), AutoProcessor.from_pretrained(checkpoint)


def test_registry_entries():
    for size in ("4b", "12b", "27b"):
        spec = get_model_type(f"gemma3-{size}-it")
        assert spec.family is FAMILIES["gemma3"] and spec.template_type == "gemma3-vision"
        assert spec.hf_id == f"google/gemma-3-{size}-it" and spec.modelscope_id == f"LLM-Research/gemma-3-{size}-it"


@pytest.mark.parametrize("case", list(BATTERY))
def test_generation_prompt_matches_official_processor(bound, case):
    template, processor = bound
    ours = check_generation_prompt(template, processor, case, sequence_keys=("token_type_ids",),
                                   expanded_token="<image_soft_token>")
    assert "num_crops" not in ours
    if BATTERY[case].images:
        soft = ours["input_ids"].count(template.token_id("<image_soft_token>"))
        assert sum(ours["token_type_ids"]) == soft == processor.image_seq_length * len(BATTERY[case].images)


def test_pan_and_scan_crops_follow_the_processor_setting(checkpoint):
    # With pan-and-scan on, a wide image gets crops: the text names the original and each crop's sequence.
    from transformers import AutoProcessor

    from swiftlite.conversation import Conversation

    tokenizer = load_tokenizer(checkpoint)
    tokenizer.swiftlite_processors.image_processor.do_pan_and_scan = True
    tokenizer.swiftlite_processors.image_processor.pan_and_scan_min_crop_size = 8
    template = get_template("gemma3-vision", tokenizer)
    processor = AutoProcessor.from_pretrained(checkpoint)
    conversation = Conversation([{"role": "user", "content": "<image>describe"}], [GREEN.resize((200, 50))])
    ours = template.encode(conversation)
    official = processor(text=[processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe"}]}],
        add_generation_prompt=True, tokenize=False)], images=[conversation.images], return_tensors="pt",
        add_special_tokens=False, do_pan_and_scan=True, pan_and_scan_min_crop_size=8)
    assert ours["input_ids"] == official["input_ids"][0].tolist()
    assert ours["pixel_values"].shape[0] > 1 and torch.equal(ours["pixel_values"], official["pixel_values"])


def test_system_prompt_joins_the_first_user_turn(bound):
    template, _ = bound
    text = template.tokenizer.decode(template.encode(BATTERY["system prompt"])["input_ids"])
    assert text.startswith("<bos><start_of_turn>user\nanswer in one word\n\n\n\n<start_of_image>")
    plain = template.tokenizer.decode(template.encode(BATTERY["text only"])["input_ids"])
    assert plain == "<bos><start_of_turn>user\nhello world<end_of_turn>\n<start_of_turn>model\n"


def test_labels_cover_exactly_the_assistant_replies(bound):
    template, processor = bound
    row = check_labels(template, processor)
    assert len(row["token_type_ids"]) == len(row["input_ids"])


def test_train_step_generate_and_prefixes(checkpoint, bound):
    template, _ = bound
    rows, batch = training_batch(template)
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    model = load_model(checkpoint, FAMILIES["gemma3"], torch.float32, device="cpu")
    check_train_step(model, template, FAMILIES["gemma3"])
    check_generate_batch(model, template, GREEN)
    check_prefixes(model, FAMILIES["gemma3"])


def test_tiny_checkpoint_carries_the_real_facts(checkpoint):
    special_tokens = ["<bos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>"]
    check_tiny_checkpoint(checkpoint, "Gemma3Config", special_tokens, image_token="<image_soft_token>")
