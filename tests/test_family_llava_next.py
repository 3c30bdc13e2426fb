"""LLaVA-NeXT (llava-v1.6): anyres token counts and tiles equal LlavaNextProcessor's; train, generate, prefixes."""

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
def checkpoints(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("llava_next")
    return {variant: build_tiny_checkpoint("llava_next", root / variant, variant=variant)
            for variant in ("mistral", "vicuna")}


@pytest.fixture(scope="module")
def bound(checkpoints):
    from transformers import AutoProcessor

    bound = {}
    for variant, template_type in (("mistral", "llava-mistral"), ("vicuna", "llava-vicuna")):
        tokenizer = load_tokenizer(checkpoints[variant])
        bound[variant] = (get_template(template_type, tokenizer), AutoProcessor.from_pretrained(checkpoints[variant]))
    return bound


@pytest.fixture(scope="module")
def model(checkpoints):
    return load_model(checkpoints["mistral"], FAMILIES["llava_next"], torch.float32, device="cpu")


def test_registry_entries():
    for name, template in (("llava1_6-mistral-7b-instruct", "llava-mistral"),
                           ("llava1_6-vicuna-7b-instruct", "llava-vicuna"),
                           ("llava1_6-vicuna-13b-instruct", "llava-vicuna")):
        spec = get_model_type(name)
        assert spec.family is FAMILIES["llava_next"] and spec.template_type == template
        assert spec.hf_id.startswith("llava-hf/llava-v1.6-")


@pytest.mark.parametrize("case", list(BATTERY))
@pytest.mark.parametrize("variant", ["mistral", "vicuna"])
def test_generation_prompt_matches_official_processor(bound, variant, case):
    template, processor = bound[variant]
    ours = check_generation_prompt(template, processor, case, media_keys=("pixel_values", "image_sizes"))
    if BATTERY[case].images:
        # anyres: the three images (portrait, landscape, square) pick different grids, so counts differ.
        assert ours["pixel_values"].dim() == 5


def test_token_count_rule_matches_processor_on_many_sizes(bound):
    template, processor = bound["mistral"]
    image_id = template.token_id("<image>")
    for size in [(10, 10), (28, 28), (29, 80), (80, 29), (57, 55), (200, 90), (33, 130), (300, 301)]:
        image = RED.resize(size)
        ours = template.encode(Conversation([{"role": "user", "content": "<image>hi"}], [image]))
        message = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}
        text = processor.apply_chat_template([message], add_generation_prompt=True, tokenize=False)
        official = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
        assert ours["input_ids"].count(image_id) == official.count(image_id), size


def test_no_system_prompt_renders_no_default(bound):
    template, _ = bound["mistral"]
    text = template.tokenizer.decode(template.encode(BATTERY["text only"])["input_ids"])
    assert text.replace(" ", "").startswith("<s>[INST]hello") and "<<SYS>>" not in text


@pytest.mark.parametrize("variant", ["mistral", "vicuna"])
def test_labels_cover_exactly_the_assistant_replies(bound, variant):
    template, processor = bound[variant]
    check_labels(template, processor)


def test_collate_pads_patch_counts_across_rows(bound):
    template, _ = bound["mistral"]
    wide = template.encode(Conversation([{"role": "user", "content": "<image>hi"}], [GREEN.resize((120, 30))]))
    square = template.encode(Conversation([{"role": "user", "content": "<image>hi"}], [BLUE]))
    assert wide["pixel_values"].shape[1] != square["pixel_values"].shape[1]
    batch = template.collate([wide, square], padding_side="left")
    longest = max(wide["pixel_values"].shape[1], square["pixel_values"].shape[1])
    assert batch["pixel_values"].shape[:2] == (2, longest) and batch["image_sizes"].shape == (2, 2)


def test_train_step_and_generate(model, bound):
    template, _ = bound["mistral"]
    rows, batch = training_batch(template)
    assert batch["pixel_values"].shape[0] == 3 and batch["labels"].shape == batch["input_ids"].shape
    check_train_step(model, template, FAMILIES["llava_next"])
    check_generate_batch(model, template, GREEN)


def test_module_prefixes(checkpoints):
    fresh = load_model(checkpoints["mistral"], FAMILIES["llava_next"], torch.float32, device="cpu")
    check_prefixes(fresh, FAMILIES["llava_next"])


def test_tiny_checkpoint_carries_the_real_facts(checkpoints):
    check_tiny_checkpoint(checkpoints["mistral"], "LlavaNextConfig", ["<unk>", "<s>", "</s>", "<image>"],
                          image_token="<image>")
