"""Llama 3.2 Vision (Mllama): ids, pixel values, aspect ratios and cross_attention_mask equal MllamaProcessor's
with the official chat template (one `<|image|>` per image, no expansion); batches pad like the processor;
labels; the base checkpoint's raw format; train step, batched generation, prefixes."""

from __future__ import annotations

import pytest
import torch

from family_checks import (BATTERY, GREEN, RED, assert_same_tensor, check_generate_batch, check_labels,
                           check_prefixes, check_train_step, official_encode, official_messages, official_processor)
from swiftlite.conversation import Conversation
from swiftlite.models import FAMILIES, get_model_type
from swiftlite.models.loading import load_model, load_tokenizer, resolve_model
from swiftlite.templates import get_template

MEDIA_KEYS = ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    return build_tiny_checkpoint("mllama", tmp_path_factory.mktemp("mllama") / "tiny")


@pytest.fixture(scope="module")
def bound(checkpoint):
    return get_template("llama3_2-vision", load_tokenizer(checkpoint)), official_processor(checkpoint)


def test_registry_entries(checkpoint):
    for name, hf_id in (("llama3_2-11b-vision-instruct", "meta-llama/Llama-3.2-11B-Vision-Instruct"),
                        ("llama3_2-90b-vision-instruct", "meta-llama/Llama-3.2-90B-Vision-Instruct"),
                        ("llama3_2-11b-vision", "meta-llama/Llama-3.2-11B-Vision")):
        spec = get_model_type(name)
        assert spec.family is FAMILIES["mllama"] and spec.hf_id == hf_id
        assert spec.modelscope_id == "LLM-Research/" + hf_id.split("/")[1]
    assert get_model_type("llama3_2-11b-vision").template_type == "llama3_2-vision-generation"
    resolved = resolve_model(model_id_or_path=str(checkpoint))
    assert resolved.family is FAMILIES["mllama"] and resolved.template_type == "llama3_2-vision"


@pytest.mark.parametrize("case", list(BATTERY))
def test_generation_prompt_matches_official_processor(bound, case):
    template, processor = bound
    conversation = BATTERY[case]
    ours = template.encode(conversation)
    official = official_encode(processor, conversation, add_generation_prompt=True)
    assert ours["input_ids"] == official["input_ids"][0].tolist()
    image_id = template.token_id("<|image|>")
    assert ours["input_ids"].count(image_id) == len(conversation.images)  # one token per image: no expansion
    for key in MEDIA_KEYS:
        if conversation.images:
            assert_same_tensor(ours[key], official[key], key)
        else:
            assert key not in ours and key not in official
    assert "num_tiles" not in ours and "labels" not in ours


def test_cross_attention_spans(bound):
    # Adjacent images share the span to the end; a later image starts at its own token and ends the earlier one's
    # span; tiles beyond an image's count stay off.
    template, _ = bound
    ours = template.encode(Conversation([{"role": "user", "content": "<image><image>which? <image>and this"}],
                                        [RED, GREEN, RED]))
    mask, ids = ours["cross_attention_mask"][0], ours["input_ids"]
    image_id = template.token_id("<|image|>")
    starts = [i for i, t in enumerate(ids) if t == image_id]
    ends = [starts[2], starts[2], len(ids)]
    tiles = ours["aspect_ratio_mask"][0].sum(-1).tolist()
    for image, count in enumerate(tiles):
        start, end = starts[image], ends[image]
        assert mask[:start, image].sum() == 0 and mask[end:, image].sum() == 0
        assert mask[start:end, image, :count].all() and mask[:, image, count:].sum() == 0


def test_batch_pads_like_the_processor(bound):
    template, processor = bound
    conversations = [BATTERY["two images in one turn"], BATTERY["one image"]]
    rows = [template.encode(c) for c in conversations]
    batch = template.collate(rows, padding_side="right")
    texts = [processor.apply_chat_template(official_messages(c), add_generation_prompt=True, tokenize=False)
             for c in conversations]
    processor.tokenizer.padding_side = "right"
    try:
        official = processor(text=texts, images=[list(c.images) for c in conversations], padding=True,
                             add_special_tokens=False, return_tensors="pt")
    finally:
        processor.tokenizer.padding_side = "left"
    for key in ("input_ids", "attention_mask") + MEDIA_KEYS:
        assert_same_tensor(batch[key], official[key], key)
    # A text-only row in a mixed batch gets an all-zero mask (its tokens see no image).
    mixed = template.collate([rows[1], template.encode(BATTERY["text only"])], padding_side="left")
    assert mixed["pixel_values"].shape[0] == 2 and mixed["cross_attention_mask"][1].sum() == 0
    assert mixed["cross_attention_mask"].shape[1] == mixed["input_ids"].shape[1]
    assert mixed["aspect_ratio_mask"][1].tolist() == [[1, 0, 0, 0]]


def test_labels_cover_exactly_the_assistant_replies(bound):
    template, processor = bound
    row = check_labels(template, processor)
    assert row["cross_attention_mask"].shape[1] == len(row["input_ids"])


def test_base_checkpoint_raw_format(checkpoint, bound):
    _, processor = bound
    template = get_template("llama3_2-vision-generation", load_tokenizer(checkpoint))
    raw = template.encode_raw("<image>describe the picture", [RED])
    # build_string_from_input places <|begin_of_text|> after the leading images; the tokenizer's own bos would
    # duplicate it in front, so the official call for raw prompts turns special tokens off.
    official = processor(text=["<|image|>describe the picture"], images=[[RED]], add_special_tokens=False,
                         return_tensors="pt")
    assert raw["input_ids"] == official["input_ids"][0].tolist()
    for key in MEDIA_KEYS:
        assert_same_tensor(raw[key], official[key], key)
    trained = template.encode(Conversation([{"role": "user", "content": "<image>describe the picture"},
                                            {"role": "assistant", "content": "a red circle"}], [RED]))
    assert trained["input_ids"][: len(raw["input_ids"])] == raw["input_ids"]
    assert trained["input_ids"][-1] == template.tokenizer.eos_token_id == trained["labels"][-1]
    # The appended eos has its cross-attention row, as the processor gives it the text ending in that eos.
    official = processor(text=[template.tokenizer.decode(trained["input_ids"])], images=[[RED]],
                         add_special_tokens=False, return_tensors="pt")
    assert trained["input_ids"] == official["input_ids"][0].tolist()
    assert_same_tensor(trained["cross_attention_mask"], official["cross_attention_mask"], "cross_attention_mask")


def test_train_step_generate_and_prefixes(checkpoint, bound):
    template, _ = bound
    family = FAMILIES["mllama"]
    model = load_model(checkpoint, family, torch.float32, device="cpu")
    check_train_step(model, template, family)
    # transformers' Mllama runs its cross-attention layers for a text-only row when the batch carries images
    # and skips them for the row alone (measured: 0.57 in a text row's first logprob, other tokens); the engine
    # generates text rows and image rows apart, so each row equals the row alone at the default tolerance.
    check_generate_batch(model, template, GREEN)
    check_prefixes(model, family)
