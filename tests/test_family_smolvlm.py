"""SmolVLM (Idefics3): split-image rows/cols text, tiles and pixel_attention_mask equal Idefics3Processor's;
train, generate, prefixes."""

from __future__ import annotations

import pytest
import torch

from family_checks import (BATTERY, BLUE, GREEN, RED, check_generate_batch, check_generation_prompt, check_labels,
                           check_prefixes, check_tiny_checkpoint, check_train_step, training_batch)
from swiftlite.conversation import Conversation
from swiftlite.models import FAMILIES, get_model_type
from swiftlite.models.loading import load_model, load_tokenizer
from swiftlite.templates import get_template


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    return build_tiny_checkpoint("smolvlm", tmp_path_factory.mktemp("smolvlm") / "tiny")


@pytest.fixture(scope="module")
def bound(checkpoint):
    from transformers import AutoProcessor

    return get_template("smolvlm", load_tokenizer(checkpoint)), AutoProcessor.from_pretrained(checkpoint)


def test_registry_entries():
    for name, hub_id in (("smolvlm-256m-instruct", "HuggingFaceTB/SmolVLM-256M-Instruct"),
                         ("smolvlm-500m-instruct", "HuggingFaceTB/SmolVLM-500M-Instruct"),
                         ("smolvlm-2b-instruct", "HuggingFaceTB/SmolVLM-Instruct")):
        spec = get_model_type(name)
        assert spec.family is FAMILIES["smolvlm"] and spec.template_type == "smolvlm" and spec.hf_id == hub_id


@pytest.mark.parametrize("case", list(BATTERY))
def test_generation_prompt_matches_official_processor(bound, case):
    template, processor = bound
    ours = check_generation_prompt(template, processor, case, media_keys=("pixel_values", "pixel_attention_mask"))
    assert "rows" not in ours and "cols" not in ours


def test_split_image_text(bound):
    template, processor = bound
    tokenizer = template.tokenizer
    big = GREEN.resize((100, 60))  # resized to fit 128 px, then split into a grid of 32-px tiles
    grid = template.image_processor(images=[[big]], return_row_col_info=True)
    rows, cols = grid["rows"][0][0], grid["cols"][0][0]
    assert rows > 1 and cols > rows
    ours = template.encode(Conversation([{"role": "user", "content": "<image>hi"}], [big]))
    text = tokenizer.decode(ours["input_ids"])
    assert f"<row_{rows}_col_{cols}>" in text and f"<row_{rows + 1}_col_1>" not in text
    assert f"<row_1_col_{cols + 1}>" not in text and text.count("<global-img>") == 1
    assert text.count("<image>\n<fake_token_around_image>") == rows - 1  # a newline closes each row
    assert ours["pixel_values"].shape[:2] == (1, rows * cols + 1)
    assert ours["input_ids"].count(template.token_id("<image>")) == (rows * cols + 1) * processor.image_seq_len
    small = template.encode(Conversation([{"role": "user", "content": "<image>hi"}], [BLUE.resize((20, 20))]))
    assert "<row_1_col_1>" in tokenizer.decode(small["input_ids"])  # still one tile + global view


def test_no_system_prompt_renders_no_default(bound):
    template, _ = bound
    text = template.tokenizer.decode(template.encode(BATTERY["text only"])["input_ids"])
    assert text == "<|im_start|>User: hello world<end_of_utterance>\nAssistant:"


def test_labels_cover_exactly_the_assistant_replies(bound):
    template, processor = bound
    check_labels(template, processor)


def test_collate_pads_tiles_across_rows(bound):
    template, _ = bound
    many = template.encode(Conversation([{"role": "user", "content": "<image><image>hi"}], [RED, GREEN]))
    one = template.encode(Conversation([{"role": "user", "content": "<image>hi"}], [BLUE.resize((20, 20))]))
    batch = template.collate([many, one], padding_side="left")
    tiles = many["pixel_values"].shape[1]
    assert tiles > one["pixel_values"].shape[1]
    assert batch["pixel_values"].shape[:2] == (2, tiles) and batch["pixel_attention_mask"].shape[:2] == (2, tiles)
    assert not batch["pixel_values"][1, one["pixel_values"].shape[1]:].any()  # padding tiles are all zero


def test_train_step_generate_and_prefixes(checkpoint, bound):
    template, _ = bound
    rows, batch = training_batch(template)
    assert batch["pixel_values"].dim() == 5
    model = load_model(checkpoint, FAMILIES["smolvlm"], torch.float32, device="cpu")
    check_train_step(model, template, FAMILIES["smolvlm"])
    check_generate_batch(model, template, GREEN)
    check_prefixes(model, FAMILIES["smolvlm"])


def test_tiny_checkpoint_carries_the_real_facts(checkpoint):
    special_tokens = ["<|im_start|>", "<fake_token_around_image>", "<global-img>", "<row_6_col_6>",
                      "<end_of_utterance>"]
    check_tiny_checkpoint(checkpoint, "Idefics3Config", special_tokens, image_token="<image>")
