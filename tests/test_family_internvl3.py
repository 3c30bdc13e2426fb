"""InternVL3 (-hf): GotOcr2 tiles and `<img><IMG_CONTEXT>...</img>` expansion equal InternVLProcessor's;
train, generate, prefixes."""

from __future__ import annotations


import pytest
import torch

from family_checks import (BATTERY, BLUE, GREEN, check_generate_batch, check_generation_prompt, check_labels,
                           check_prefixes, check_tiny_checkpoint, check_train_step, official_processor)
from swiftlite.conversation import Conversation
from swiftlite.models import FAMILIES, get_model_type
from swiftlite.models.loading import load_model, load_tokenizer
from swiftlite.templates import get_template


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    return build_tiny_checkpoint("internvl3", tmp_path_factory.mktemp("internvl3") / "tiny")


@pytest.fixture(scope="module")
def bound(checkpoint):
    tokenizer = load_tokenizer(checkpoint)
    return get_template("internvl3-hf", tokenizer), official_processor(checkpoint)


def test_registry_entries():
    for size in ("1b", "2b", "8b"):
        spec = get_model_type(f"internvl3-{size}-hf")
        assert spec.family is FAMILIES["internvl3"] and spec.template_type == "internvl3-hf"
        assert spec.hf_id == f"OpenGVLab/InternVL3-{size.upper()}-hf"


@pytest.mark.parametrize("case", list(BATTERY))
def test_generation_prompt_matches_official_processor(bound, case):
    template, processor = bound
    ours = check_generation_prompt(template, processor, case)
    assert "num_patches" not in ours  # used only to count tokens, never passed to the model


def test_tiles_and_wrapping(bound):
    template, processor = bound
    tokenizer = template.tokenizer
    wide = GREEN.resize((300, 60))  # a 5:1 image takes several tiles plus the thumbnail
    ours = template.encode(Conversation([{"role": "user", "content": "<image>hi"}], [wide]))
    tiles = ours["pixel_values"].shape[0]
    assert tiles > 2
    ids = ours["input_ids"]
    start = ids.index(tokenizer.convert_tokens_to_ids("<img>"))
    end = ids.index(tokenizer.convert_tokens_to_ids("</img>"))
    per_tile = template.processor_config["image_seq_length"]
    assert end - start - 1 == tiles * per_tile
    assert set(ids[start + 1:end]) == {template.token_id("<IMG_CONTEXT>")}


def test_no_system_prompt_renders_no_default(bound):
    template, _ = bound
    text = template.tokenizer.decode(template.encode(BATTERY["text only"])["input_ids"])
    assert text == "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"


def test_labels_cover_exactly_the_assistant_replies(bound):
    template, processor = bound
    check_labels(template, processor)


def test_train_step_generate_and_prefixes(checkpoint, bound):
    template, _ = bound
    model = load_model(checkpoint, FAMILIES["internvl3"], torch.float32, device="cpu")
    check_train_step(model, template, FAMILIES["internvl3"])
    check_generate_batch(model, template, BLUE)
    check_prefixes(model, FAMILIES["internvl3"])


def test_tiny_checkpoint_carries_the_real_facts(checkpoint):
    special_tokens = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<box>"]
    check_tiny_checkpoint(checkpoint, "InternVLConfig", special_tokens, image_token="<IMG_CONTEXT>")
