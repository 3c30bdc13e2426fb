"""Qwen2.5-VL and Qwen3-VL: our encoding equals Qwen2_5_VLProcessor / Qwen3VLProcessor with the checkpoint's
own chat template (ids, pixels, grids, mm_token_type_ids); labels; a train step; batched generation; prefixes."""

from __future__ import annotations

import pytest
import torch

from family_checks import (BATTERY, GREEN, RED, check_generate_batch, check_generation_prompt, check_labels,
                           check_prefixes, check_train_step, official_processor)
from swiftlite.conversation import Conversation
from swiftlite.models import FAMILIES, get_model_type
from swiftlite.models.loading import load_model, load_tokenizer, resolve_model
from swiftlite.templates import get_template
from swiftlite.testing.tiny import fixture_chat_template

VL_FAMILIES = ("qwen2_5-vl", "qwen3-vl")
PROCESSOR_CLASS = {"qwen2_5-vl": "Qwen2_5_VLProcessor", "qwen3-vl": "Qwen3VLProcessor"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("qwen_vl")
    return {family: build_tiny_checkpoint(family, root / family) for family in VL_FAMILIES}


@pytest.fixture(scope="module")
def bound(checkpoints):
    bound = {}
    for family, directory in checkpoints.items():
        tokenizer = load_tokenizer(directory)
        bound[family] = (get_template(FAMILIES[family].template, tokenizer), official_processor(directory))
    return bound


@pytest.fixture(scope="module")
def models(checkpoints):
    return {family: load_model(directory, FAMILIES[family], torch.float32, device="cpu")
            for family, directory in checkpoints.items()}


def test_registry_entries(checkpoints):
    for name, hf_id in (("qwen2_5-vl-3b-instruct", "Qwen/Qwen2.5-VL-3B-Instruct"),
                        ("qwen2_5-vl-7b-instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
                        ("qwen2_5-vl-72b-instruct", "Qwen/Qwen2.5-VL-72B-Instruct"),
                        ("qwen3-vl-2b-instruct", "Qwen/Qwen3-VL-2B-Instruct"),
                        ("qwen3-vl-8b-instruct", "Qwen/Qwen3-VL-8B-Instruct"),
                        ("qwen3-vl-4b-thinking", "Qwen/Qwen3-VL-4B-Thinking")):
        spec = get_model_type(name)
        assert spec.hf_id == hf_id and spec.modelscope_id == hf_id
    assert get_model_type("qwen2_5_vl_7b_instruct").name == "qwen2_5-vl-7b-instruct"
    for family, directory in checkpoints.items():
        resolved = resolve_model(model_id_or_path=str(directory))
        assert resolved.family is FAMILIES[family] and resolved.template_type == family


@pytest.mark.parametrize("case", list(BATTERY))
@pytest.mark.parametrize("family", VL_FAMILIES)
def test_generation_prompt_matches_official_processor(bound, family, case):
    template, processor = bound[family]
    check_generation_prompt(template, processor, case, media_keys=("pixel_values", "image_grid_thw"),
                            sequence_keys=("mm_token_type_ids",))


def test_patch_sizes_follow_each_family(bound):
    # Qwen2.5-VL: 14-px patches (28-px merged units); Qwen3-VL: 16-px patches (32-px units).
    for family, unit in (("qwen2_5-vl", 28), ("qwen3-vl", 32)):
        template, _ = bound[family]
        row = template.encode(Conversation([{"role": "user", "content": "<image>hi"}],
                                           [RED.resize((unit * 4, unit * 2))]))
        assert row["image_grid_thw"].tolist() == [[1, 4, 8]]
        assert row["input_ids"].count(template.token_id("<|image_pad|>")) == 8  # 4x8 patches merged 2x2


def test_default_system_prompt_per_family(bound):
    qwen2_5, _ = bound["qwen2_5-vl"]
    qwen3, _ = bound["qwen3-vl"]
    text = BATTERY["text only"]
    assert qwen2_5.tokenizer.decode(qwen2_5.encode(text)["input_ids"]).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert qwen3.tokenizer.decode(qwen3.encode(text)["input_ids"]) == (
        "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n")  # no default system prompt


@pytest.mark.parametrize("family", VL_FAMILIES)
def test_labels_cover_exactly_the_assistant_replies(bound, family):
    template, processor = bound[family]
    row = check_labels(template, processor)
    assert row["mm_token_type_ids"].count(1) == row["input_ids"].count(template.token_id("<|image_pad|>"))


@pytest.mark.parametrize("family", VL_FAMILIES)
def test_train_step_generate_and_prefixes(bound, models, family):
    template, _ = bound[family]
    model = models[family]
    check_train_step(model, template)
    check_generate_batch(model, template, GREEN)
    check_prefixes(model, FAMILIES[family])


def test_image_in_second_turn_generates_with_mrope(bound, models):
    # Multi-image prompt through generate: M-RoPE positions need mm_token_type_ids with every image grid.
    from swiftlite.engine.generate import SamplingParams, generate

    template, _ = bound["qwen3-vl"]
    row = template.encode(BATTERY["multi-turn, images in several turns"])
    assert row["image_grid_thw"].shape == (3, 3)
    result = generate(models["qwen3-vl"], template, [row], [SamplingParams(max_new_tokens=3, temperature=0)])[0]
    assert result.prompt_tokens == len(row["input_ids"]) and 1 <= len(result.token_ids) <= 3


@pytest.mark.parametrize("family,fixture", [("qwen2_5-vl", "qwen2.5-vl"), ("qwen3-vl", "qwen3-vl")])
def test_checkpoint_carries_the_real_facts(checkpoints, family, fixture):
    from transformers import AutoConfig, AutoTokenizer

    from swiftlite.testing.tiny import fixture_facts

    facts = fixture_facts(fixture)
    config = AutoConfig.from_pretrained(checkpoints[family])
    assert config.model_type == facts["config"]["model_type"]
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[family])
    first = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for token in facts["tokenizer"]["added_tokens"]:
        # Same strings in the same order as the hub vocabulary (ids shifted by the smaller base vocabulary).
        assert tokenizer.convert_tokens_to_ids(token["content"]) - first == token["id"] - 151643, token["content"]
        assert len(tokenizer.encode(token["content"], add_special_tokens=False)) == 1
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert getattr(config, key) - first == facts["config"][key] - 151643, key
    # The official template (fixtures/ holds the hub file), not the directory compared with itself.
    fixture = {"qwen2_5-vl": "qwen2.5-vl", "qwen3-vl": "qwen3-vl"}[family]
    assert tokenizer.chat_template.strip() == fixture_chat_template(fixture).strip()
