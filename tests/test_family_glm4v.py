"""GLM-4.1V (family glm4_1v): our encoding equals Glm4vProcessor with the official chat template (ids, pixels,
grids, mm_token_type_ids); raw-string system/assistant contents; labels with the appended <|endoftext|>;
generation stops at <|user|>; a train step; batched generation; prefixes."""

from __future__ import annotations

import pytest
import torch

from family_checks import (BATTERY, GREEN, RED, check_generate_batch, check_generation_prompt, check_labels,
                           check_prefixes, check_tiny_checkpoint, check_train_step, official_processor,
                           training_conversation)
from swiftlite.conversation import Conversation
from swiftlite.models import FAMILIES, get_model_type
from swiftlite.models.loading import load_model, load_tokenizer, resolve_model
from swiftlite.templates import IGNORE_INDEX, get_template
from swiftlite.testing.tiny import fixture_chat_template

FAMILY = FAMILIES["glm4_1v"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    return build_tiny_checkpoint("glm4_1v", tmp_path_factory.mktemp("glm4_1v") / "tiny")


@pytest.fixture(scope="module")
def bound(checkpoint):
    return get_template("glm4_1v", load_tokenizer(checkpoint)), official_processor(checkpoint)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint, FAMILY, torch.float32, device="cpu")


def test_registry_entries(checkpoint):
    for name, hf_id, modelscope_id, is_chat in (
            ("glm4_1v-9b-thinking", "zai-org/GLM-4.1V-9B-Thinking", "ZhipuAI/GLM-4.1V-9B-Thinking", True),
            ("glm4_1v-9b-base", "zai-org/GLM-4.1V-9B-Base", "ZhipuAI/GLM-4.1V-9B-Base", False)):
        spec = get_model_type(name)
        assert (spec.hf_id, spec.modelscope_id, spec.is_chat) == (hf_id, modelscope_id, is_chat)
        assert spec.family is FAMILY and spec.template_type == "glm4_1v"
    # The remote-code GLM-4V-9B keeps its own family and template names.
    assert get_model_type("glm4v-9b-chat").family is FAMILIES["glm4v"] is not FAMILY
    resolved = resolve_model(model_id_or_path=str(checkpoint))
    assert resolved.family is FAMILY and resolved.template_type == "glm4_1v"


def test_tiny_checkpoint_carries_the_real_facts(checkpoint):
    from transformers import AutoConfig, AutoTokenizer

    from swiftlite.testing.tiny import fixture_facts

    facts = fixture_facts("glm4v")
    added = facts["tokenizer"]["added_tokens"]
    check_tiny_checkpoint(checkpoint, "Glm4vConfig", [t["content"] for t in added], "<|image|>")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    first = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for token in added:  # same strings at the same offsets as the hub vocabulary
        assert tokenizer.convert_tokens_to_ids(token["content"]) - first == token["id"] - 151329, token["content"]
    config = AutoConfig.from_pretrained(checkpoint)
    for key in ("image_token_id", "video_token_id", "image_start_token_id", "image_end_token_id",
                "video_start_token_id", "video_end_token_id"):
        assert getattr(config, key) - first == facts["config"][key] - 151329, key
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    # The official template (fixtures/ holds the hub file), not the directory compared with itself.
    assert tokenizer.chat_template.strip() == fixture_chat_template("glm4v").strip()


@pytest.mark.parametrize("case", list(BATTERY))
def test_generation_prompt_matches_official_processor(bound, case):
    template, processor = bound
    check_generation_prompt(template, processor, case, media_keys=("pixel_values", "image_grid_thw"),
                            sequence_keys=("mm_token_type_ids",))


def test_prompt_layout(bound):
    template, _ = bound
    decoded = template.tokenizer.decode(template.encode(BATTERY["system prompt"])["input_ids"])
    assert decoded.startswith("[gMASK]<sop><|system|>\nanswer in one word<|user|>\n<|begin_of_image|><|image|>")
    assert decoded.endswith("<|end_of_image|>what shape?<|assistant|>\n")
    # A multi-turn history prints each reply as raw text (a content-part list would render as a Python list).
    history = training_conversation()
    text = template.tokenizer.decode(template.encode(Conversation(history.messages[:2] + [
        {"role": "user", "content": "and now?"}], history.images[:1]))["input_ids"])
    assert "<|assistant|>\nred<|user|>\nand now?<|assistant|>\n" in text and "'type'" not in text
    assert template.tokenizer.decode(template.encode_raw("<image>hi", [RED])["input_ids"]).startswith(
        "<|begin_of_image|><|image|><|image|>")


def test_labels_cover_the_replies_and_the_appended_eos(bound):
    template, processor = bound
    row = check_labels(template, processor)  # the official ids plus <|endoftext|> after each reply
    eos = template.tokenizer.eos_token_id
    labelled_eos = [i for i, t in enumerate(row["input_ids"]) if t == eos]
    assert len(labelled_eos) == 3 and all(row["labels"][i] == eos for i in labelled_eos)
    user = template.token_id("<|user|>")
    assert all(row["labels"][i] == IGNORE_INDEX for i, t in enumerate(row["input_ids"]) if t == user)
    assert row["mm_token_type_ids"].count(1) == row["input_ids"].count(template.token_id("<|image|>"))


def test_generation_stops_where_the_next_turn_starts(bound, model):
    template, _ = bound
    tokenizer = template.tokenizer
    ids = set(tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|user|>", "<|observation|>"]))
    # From the template alone (a checkpoint whose generation_config lists only eos) and with the hub's config.
    assert set(template.stop_token_ids()) == ids
    assert set(template.stop_token_ids(model.generation_config)) == ids
    assert template.stop_words == ["<|endoftext|>", "<|user|>", "<|observation|>"]

    from swiftlite.engine.generate import SamplingParams, generate

    row = template.encode(BATTERY["text only"])
    # Make the model "answer" by opening a new user turn (the <|user|> row of lm_head aligned with the prompt's
    # last hidden state): generation must end right there, with nothing emitted.
    user = template.token_id("<|user|>")
    saved = model.lm_head.weight[user].clone()
    with torch.no_grad():
        batch = template.collate([row], padding_side="left")
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1][0, -1]
        model.lm_head.weight[user] = hidden * 100
    try:
        result = generate(model, template, [row], [SamplingParams(max_new_tokens=5, temperature=0)])[0]
    finally:
        with torch.no_grad():
            model.lm_head.weight[user] = saved
    assert result.finish_reason == "stop" and result.token_ids == []


def test_train_step_generate_and_prefixes(bound, model):
    template, _ = bound
    check_train_step(model, template, FAMILY)
    check_generate_batch(model, template, GREEN)
    check_prefixes(model, FAMILY)
