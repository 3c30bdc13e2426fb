"""Our template encoding equals the official chat template + official processor, token for token.

For each family the official processor class from transformers (LlavaProcessor, Qwen2VLProcessor) renders
the checkpoint's own chat template and expands image placeholders its own way; our Template must produce
the same input_ids (and pixel values, and Qwen2-VL's mm_token_type_ids) on a battery of conversations.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from swiftlite.conversation import Conversation
from swiftlite.models.loading import load_tokenizer
from swiftlite.templates import IGNORE_INDEX, get_template

TEMPLATE_OF = {"qwen2-vl": "qwen2-vl", "llava1_5": "llava1_5"}

RED = Image.new("RGB", (56, 84), (255, 0, 0))
GREEN = Image.new("RGB", (100, 60), (0, 255, 0))
BLUE = Image.new("RGB", (30, 30), (0, 0, 255))

BATTERY = {
    "text only": Conversation([{"role": "user", "content": "hello world"}]),
    "one image": Conversation([{"role": "user", "content": "<image>what is in this image?"}], [RED]),
    "two images in one turn": Conversation(
        [{"role": "user", "content": "Picture 1:<image>\nPicture 2:<image>\nwhich shape is red?"}], [RED, GREEN]
    ),
    "multi-turn, images in several turns": Conversation(
        [
            {"role": "user", "content": "<image>what colour is it?"},
            {"role": "assistant", "content": "red"},
            {"role": "user", "content": "and this one? <image>"},
            {"role": "assistant", "content": "green"},
            {"role": "user", "content": "<image>and the last?"},
        ],
        [RED, GREEN, BLUE],
    ),
    "system prompt": Conversation(
        [{"role": "system", "content": "answer in one word"}, {"role": "user", "content": "<image>what shape?"}], [RED]
    ),
}


def official_processor(family: str, checkpoint_dir, tokenizer):
    if family == "llava1_5":
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(checkpoint_dir)
    from transformers import Qwen2VLProcessor

    # Qwen2VLProcessor insists on a torchvision video processor, which this CPU environment cannot have;
    # images never touch it, so we build the processor with the official image processor and no video one.
    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name != "video_processor":
                return super().check_argument_for_proper_class(argument_name, argument)

    return ImageOnlyQwen2VLProcessor(
        image_processor=tokenizer.swiftlite_image_processor, tokenizer=tokenizer, video_processor=None,
        chat_template=tokenizer.chat_template,
    )


@pytest.fixture(scope="module")
def bound(tiny_checkpoints):
    bound = {}
    for family, directory in tiny_checkpoints.items():
        tokenizer = load_tokenizer(directory)
        template = get_template(TEMPLATE_OF[family], tokenizer)
        bound[family] = (template, official_processor(family, directory, tokenizer))
    return bound


def official_messages(conversation: Conversation) -> list[dict]:
    """The conversation written the way users of the official processor write it (content-part lists)."""
    messages = []
    for message in conversation.messages:
        parts = []
        for index, piece in enumerate(message["content"].split("<image>")):
            if index:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": message["role"], "content": parts})
    return messages


@pytest.mark.parametrize("family", list(TEMPLATE_OF))
@pytest.mark.parametrize("case", list(BATTERY))
def test_generation_prompt_matches_official_processor(bound, family, case):
    template, processor = bound[family]
    conversation = BATTERY[case]
    ours = template.encode(conversation)

    text = processor.apply_chat_template(official_messages(conversation), add_generation_prompt=True, tokenize=False)
    official = processor(text=[text], images=conversation.images or None, return_tensors="pt")

    assert ours["input_ids"] == official["input_ids"][0].tolist()
    assert "labels" not in ours
    if conversation.images:
        assert torch.equal(ours["pixel_values"], official["pixel_values"])
        image_token = template.token_id(template.meta.image_token)
        assert ours["input_ids"].count(image_token) > len(conversation.images)  # expanded, not one per image
    if family == "qwen2-vl":
        assert ours["mm_token_type_ids"] == official["mm_token_type_ids"][0].tolist()
        if conversation.images:
            assert torch.equal(ours["image_grid_thw"], official["image_grid_thw"])


@pytest.mark.parametrize("family", list(TEMPLATE_OF))
def test_no_system_prompt_gets_template_default(bound, family):
    template, processor = bound[family]
    text = template.tokenizer.decode(template.encode(BATTERY["text only"])["input_ids"])
    if family == "qwen2-vl":
        assert "You are a helpful assistant." in text  # the official template injects its default system
    else:
        assert text.startswith("<s>") and "USER: hello world" in text


def _training_conversation():
    convo = BATTERY["multi-turn, images in several turns"]
    return Conversation(convo.messages + [{"role": "assistant", "content": "blue"}], convo.images)


@pytest.mark.parametrize("family", list(TEMPLATE_OF))
def test_labels_cover_exactly_the_assistant_replies(bound, family):
    template, processor = bound[family]
    tokenizer = template.tokenizer
    row = template.encode(_training_conversation())
    ids, labels = row["input_ids"], row["labels"]
    assert len(ids) == len(labels)

    # Token by token: every labelled position carries its own input id; all others are ignored.
    labelled = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in labelled)
    end_of_turn = template.meta.end_of_turn or tokenizer.eos_token
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn)

    # The labelled tokens split into three runs, one per reply, each ending with the end-of-turn token.
    runs, current = [], [labelled[0]]
    for previous, index in zip(labelled, labelled[1:]):
        if index == previous + 1:
            current.append(index)
        else:
            runs.append(current)
            current = [index]
    runs.append(current)
    assert len(runs) == 3
    replies = ["red", "green", "blue"]
    for run, reply in zip(runs, replies):
        assert ids[run[-1]] == end_id
        assert tokenizer.decode([ids[i] for i in run[:-1]]).strip() == reply

    # Nothing from user turns, system prompt or image tokens is labelled.
    image_id = template.token_id(template.meta.image_token)
    assert all(ids[i] != image_id for i in labelled)

    # The training encoding is the official full render (+ the appended eos where the official template closes no turn).
    _, processor = bound[family]
    text = processor.apply_chat_template(official_messages(_training_conversation()), tokenize=False)
    official = processor(text=[text], images=_training_conversation().images, return_tensors="pt")["input_ids"][0].tolist()
    if template.meta.end_of_turn:
        assert ids == official
    else:
        assert [t for t in ids if t != tokenizer.eos_token_id] == official


def test_media_count_mismatch_names_both_numbers(bound):
    from swiftlite.media import MediaError

    template, _ = bound["qwen2-vl"]
    with pytest.raises(MediaError, match=r"2 <image> placeholders but 1 image"):
        template.encode(Conversation([{"role": "user", "content": "<image><image>hi"}], [RED]))


def test_template_rejects_bad_turn_order(bound):
    from swiftlite.templates import TemplateError

    template, _ = bound["llava1_5"]
    with pytest.raises(TemplateError, match="alternate"):
        template.encode(Conversation([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]))
