"""PaliGemma: prefix/suffix encoding equals PaliGemmaProcessor (ids, pixels, token_type_ids, labels), raw
completions too; no system prompt or history; train step, batched generation, prefixes."""

from __future__ import annotations

import math

import pytest
import torch

from family_checks import BLUE, GREEN, RED, check_generate_batch, check_prefixes, official_processor
from swiftlite.conversation import Conversation
from swiftlite.models import FAMILIES, get_model_type
from swiftlite.models.loading import load_model, load_tokenizer, resolve_model
from swiftlite.templates import IGNORE_INDEX, TemplateError, get_template

# (user text, images, reply or None): the user text is the processor's `text`, the reply its `suffix`.
CASES = {
    "one image": ("<image>caption en", [RED], None),
    "two images": ("<image><image>answer en which shape is red?", [RED, GREEN], None),
    "image after text": ("describe the picture <image>", [BLUE], None),
    "one image, suffix": ("<image>caption en", [RED], "a red circle"),
    "two images, suffix": ("<image><image>how many are there", [RED, GREEN], "two"),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    return build_tiny_checkpoint("paligemma", tmp_path_factory.mktemp("paligemma") / "tiny")


@pytest.fixture(scope="module")
def bound(checkpoint):
    # The official processor, built by transformers from the saved directory.
    return get_template("paligemma", load_tokenizer(checkpoint)), official_processor(checkpoint)


def conversation(text, images, reply):
    messages = [{"role": "user", "content": text}]
    if reply is not None:
        messages.append({"role": "assistant", "content": reply})
    return Conversation(messages, images)


def test_registry_entries(checkpoint):
    for name, hf_id in (("paligemma-3b-pt-224", "google/paligemma-3b-pt-224"),
                        ("paligemma-3b-pt-448", "google/paligemma-3b-pt-448"),
                        ("paligemma-3b-mix-224", "google/paligemma-3b-mix-224"),
                        ("paligemma2-3b-pt-224", "google/paligemma2-3b-pt-224")):
        spec = get_model_type(name)
        assert spec.hf_id == hf_id and spec.modelscope_id == "AI-ModelScope/" + hf_id.split("/")[1]
        assert spec.family is FAMILIES["paligemma"] and spec.template_type == "paligemma" and not spec.is_chat
    resolved = resolve_model(model_id_or_path=str(checkpoint))
    assert resolved.family is FAMILIES["paligemma"] and resolved.template_type == "paligemma"


@pytest.mark.parametrize("case", list(CASES))
def test_encoding_matches_official_processor(bound, case):
    template, processor = bound
    text, images, reply = CASES[case]
    ours = template.encode(conversation(text, images, reply))
    official = processor(text=[text], images=[images], suffix=reply, return_tensors="pt")
    assert ours["input_ids"] == official["input_ids"][0].tolist()
    assert ours["token_type_ids"] == official["token_type_ids"][0].tolist()
    assert torch.equal(ours["pixel_values"], official["pixel_values"])
    image_id = template.token_id("<image>")
    assert ours["input_ids"].count(image_id) == processor.image_seq_length * len(images)
    if reply is None:
        assert "labels" not in ours and set(ours["token_type_ids"]) == {0}
    else:
        assert ours["labels"] == official["labels"][0].tolist()
        suffix = [t for t, label in zip(ours["input_ids"], ours["labels"]) if label != IGNORE_INDEX]
        assert suffix[-1] == template.tokenizer.eos_token_id
        assert template.tokenizer.decode(suffix[:-1]).strip() == reply


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][2] is None])
def test_raw_completion_matches_official_processor(bound, case):
    template, processor = bound
    text, images, _ = CASES[case]
    ours = template.encode_raw(text, images)
    official = processor(text=[text], images=[images], return_tensors="pt")
    assert ours["input_ids"] == official["input_ids"][0].tolist()
    assert ours["input_ids"] == template.encode(conversation(text, images, None))["input_ids"]


def test_prompt_layout_and_text_only(bound):
    template, _ = bound
    decoded = template.tokenizer.decode(template.encode(conversation("describe <image>", [RED], None))["input_ids"])
    assert decoded == "describe " + "<image>" * 16 + "<bos>\n"
    # Without an image the prompt still starts with <bos> and ends with the newline the model completes after.
    assert template.tokenizer.decode(template.encode_raw("hello world")["input_ids"]) == "<bos>hello world\n"
    assert template.encode_raw("hello world")["input_ids"] == template.encode(
        conversation("hello world", [], None))["input_ids"]


def test_no_system_prompt_or_history(bound):
    template, _ = bound
    with pytest.raises(TemplateError, match="system"):
        template.encode(Conversation([{"role": "system", "content": "be brief"},
                                      {"role": "user", "content": "<image>caption en"}], [RED]))
    with pytest.raises(TemplateError, match="one user turn"):
        template.encode(Conversation([{"role": "user", "content": "<image>caption en"},
                                      {"role": "assistant", "content": "red"},
                                      {"role": "user", "content": "and now?"}], [RED]))
    assert not template.meta.is_chat and template.stop_token_ids() == [template.tokenizer.eos_token_id]


def test_train_step_generate_and_prefixes(checkpoint, bound):
    template, _ = bound
    family = FAMILIES["paligemma"]
    rows = [template.encode(conversation("<image>caption en", [RED], "a red circle")),
            template.encode(conversation("answer en hello world", [], "yes"))]
    batch = template.collate(rows, padding_side="right")
    assert batch["token_type_ids"].shape == batch["input_ids"].shape
    assert torch.equal(batch["token_type_ids"] == 1, batch["labels"] != IGNORE_INDEX)
    model = load_model(checkpoint, family, torch.float32, device="cpu")
    model.train()
    try:
        loss = model(**batch).loss
        assert math.isfinite(loss.item())
        loss.backward()
    finally:
        model.eval()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith(family.aligner) and g.abs().sum() > 0 for n, g in grads.items())
    assert any(n.startswith(family.language_model) for n in grads)
    model.zero_grad()
    check_generate_batch(model, template, GREEN)
    check_prefixes(model, family)
