"""Qwen2-VL and LLaVA-1.5: our template encoding equals the official chat template + official processor.

For each family the official processor class from transformers (LlavaProcessor, Qwen2VLProcessor) renders the
checkpoint's own chat template and expands image placeholders its own way; our Template must produce the same
input_ids (and pixel values, and Qwen2-VL's mm_token_type_ids) on the shared battery of conversations
(tests/family_checks.py), and label exactly the assistant replies.
"""

from __future__ import annotations

import pytest
from PIL import Image

from family_checks import BATTERY, check_generation_prompt, check_labels, official_processor
from swiftlite.conversation import Conversation
from swiftlite.models.loading import load_tokenizer
from swiftlite.templates import get_template

TEMPLATE_OF = {"qwen2-vl": "qwen2-vl", "llava1_5": "llava1_5"}
CHECKED = {"qwen2-vl": dict(media_keys=("pixel_values", "image_grid_thw"), sequence_keys=("mm_token_type_ids",)),
           "llava1_5": dict(media_keys=("pixel_values",))}


@pytest.fixture(scope="module")
def bound(tiny_checkpoints):
    bound = {}
    for family, directory in tiny_checkpoints.items():
        tokenizer = load_tokenizer(directory)
        template = get_template(TEMPLATE_OF[family], tokenizer)
        bound[family] = (template, official_processor(directory))
    return bound


@pytest.mark.parametrize("family", list(TEMPLATE_OF))
@pytest.mark.parametrize("case", list(BATTERY))
def test_generation_prompt_matches_official_processor(bound, family, case):
    template, processor = bound[family]
    check_generation_prompt(template, processor, case, **CHECKED[family])


@pytest.mark.parametrize("family", list(TEMPLATE_OF))
def test_no_system_prompt_gets_template_default(bound, family):
    template, _ = bound[family]
    text = template.tokenizer.decode(template.encode(BATTERY["text only"])["input_ids"])
    if family == "qwen2-vl":
        assert "You are a helpful assistant." in text  # the official template injects its default system
    else:
        assert text.startswith("<s>") and "USER: hello world" in text


@pytest.mark.parametrize("family", list(TEMPLATE_OF))
def test_labels_cover_exactly_the_assistant_replies(bound, family):
    template, processor = bound[family]
    check_labels(template, processor)


def test_media_count_mismatch_names_both_numbers(bound):
    from swiftlite.media import MediaError

    template, _ = bound["qwen2-vl"]
    with pytest.raises(MediaError, match=r"2 <image> placeholders but 1 image"):
        template.encode(Conversation([{"role": "user", "content": "<image><image>hi"}], [Image.new("RGB", (28, 28))]))


def test_template_rejects_bad_turn_order(bound):
    from swiftlite.templates import TemplateError

    template, _ = bound["llava1_5"]
    with pytest.raises(TemplateError, match="alternate"):
        template.encode(Conversation([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]))
