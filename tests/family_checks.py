"""Checks every model family's test file runs against its tiny checkpoint and official processor.

- fidelity: our Template.encode equals the official chat template + official transformers processor, token
  for token (and pixel values and extra inputs), on a battery of conversations;
- labels: exactly the assistant replies (and their end-of-turn token) are labelled, on a multi-turn sample;
- training: a collated batch (an image row and a text-only row) gives a finite loss and gradients;
- generation: swiftlite.engine.generate runs a batch of an image row and a text row;
- prefixes: the registry's module prefixes cover every parameter, and LoRA on the language model's linear
  layers wraps nothing of the vision tower or aligner.
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from swiftlite.conversation import Conversation
from swiftlite.templates import IGNORE_INDEX
from swiftlite.testing.layouts import official_processor  # noqa: F401  (the family tests' official side)

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


def training_conversation() -> Conversation:
    convo = BATTERY["multi-turn, images in several turns"]
    return Conversation(convo.messages + [{"role": "assistant", "content": "blue"}], convo.images)


def official_messages(conversation: Conversation, string_roles=()) -> list[dict]:
    """The conversation written the way users of the official processor write it (content-part lists; plain
    strings for the roles whose content the template prints raw, e.g. GLM-4.1V's system and assistant)."""
    messages = []
    for message in conversation.messages:
        if message["role"] in string_roles:
            messages.append(dict(message))
            continue
        parts = []
        for index, piece in enumerate(message["content"].split("<image>")):
            if index:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": message["role"], "content": parts})
    return messages


def official_encode(processor, conversation: Conversation, add_generation_prompt: bool, string_roles=()) -> dict:
    """What `processor.apply_chat_template(..., tokenize=True)` does: render, then run the processor on the text,
    without the tokenizer's own special tokens when the render already starts with bos."""
    text = processor.apply_chat_template(official_messages(conversation, string_roles),
                                         add_generation_prompt=add_generation_prompt, tokenize=False)
    bos = processor.tokenizer.bos_token
    return processor(text=[text], images=list(conversation.images) or None, return_tensors="pt",
                     add_special_tokens=not (bos is not None and text.startswith(bos)))


def assert_same_tensor(ours, official, key):
    assert isinstance(ours, torch.Tensor), f"{key}: not a tensor"
    official = torch.as_tensor(official)
    assert ours.shape == official.shape, f"{key}: shape {tuple(ours.shape)} != official {tuple(official.shape)}"
    assert torch.equal(ours, official.to(ours.dtype)), f"{key} differs from the official processor"


def check_generation_prompt(template, processor, case: str, media_keys=("pixel_values",), sequence_keys=(),
                            expanded_token: str | None = None):
    """Ours == official on one battery case: input_ids, the media tensors, and sequence-aligned extra inputs.
    `expanded_token`: the token an image expands to, when it is not the template's placeholder (Gemma 3)."""
    conversation = BATTERY[case]
    ours = template.encode(conversation)
    official = official_encode(processor, conversation, add_generation_prompt=True,
                               string_roles=template.meta.rendering.string_content_roles)
    assert ours["input_ids"] == official["input_ids"][0].tolist()
    assert "labels" not in ours
    if conversation.images:
        for key in media_keys:
            assert_same_tensor(ours[key], official[key], key)
        image_id = template.token_id(expanded_token or template.meta.image_token)
        assert ours["input_ids"].count(image_id) > len(conversation.images)  # expanded, not one per image
    for key in sequence_keys:
        assert ours[key] == official[key][0].tolist(), f"{key} differs from the official processor"
    return ours


def check_labels(template, processor, end_of_turn: str | None = None, replies=("red", "green", "blue")):
    """Token by token: labels cover each assistant reply and its end-of-turn token, nothing else; the ids are
    the official full render (plus the eos appended after each reply where the template closes no turn)."""
    tokenizer = template.tokenizer
    conversation = training_conversation()
    row = template.encode(conversation)
    ids, labels = row["input_ids"], row["labels"]
    assert len(ids) == len(labels)
    labelled = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in labelled)
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn or template.meta.end_of_turn or tokenizer.eos_token)
    runs, current = [], [labelled[0]]
    for previous, index in zip(labelled, labelled[1:]):
        if index == previous + 1:
            current.append(index)
        else:
            runs.append(current)
            current = [index]
    runs.append(current)
    assert len(runs) == len(replies)
    for run, reply in zip(runs, replies):
        assert ids[run[-1]] == end_id
        assert tokenizer.decode([ids[i] for i in run[:-1]]).strip() == reply
    image_id = template.token_id(template.meta.image_token)
    assert all(ids[i] != image_id for i in labelled)

    official = official_encode(processor, conversation, add_generation_prompt=False,
                               string_roles=template.meta.rendering.string_content_roles)["input_ids"][0].tolist()
    if template.meta.end_of_turn:
        assert ids == official
    else:
        assert [t for t in ids if t != tokenizer.eos_token_id] == official
    return row


def training_batch(template):
    rows = [template.encode(training_conversation()),
            template.encode(Conversation([{"role": "user", "content": "hello world"},
                                          {"role": "assistant", "content": "yes"}]))]
    return rows, template.collate(rows, padding_side="right")


def check_train_step(model, template, family=None):
    """Forward with labels from encode + collate gives a finite loss; backward reaches the LLM and the aligner
    (so the image features really entered the sequence)."""
    rows, batch = training_batch(template)
    model.train()
    try:
        model.zero_grad()
        loss = model(**batch).loss
        assert loss is not None and math.isfinite(loss.item())
        loss.backward()
    finally:
        model.eval()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert grads
    if family is not None:
        assert any(name.startswith(family.language_model) for name in grads)
        assert any(name.startswith(family.aligner) and grads[name].abs().sum() > 0 for name in grads)
    assert all(torch.isfinite(g).all() for g in grads.values())
    model.zero_grad()
    return loss.item()


def assert_same_logprobs(first, second, atol: float = 1e-4, what: str = "the two runs"):
    """Two generation results (swiftlite RowResult, or lists of per-step logprob dicts) agree step by step:
    the same tokens, each with the same logprob and the same top alternatives within `atol`. On the tiny
    checkpoints (whose outputs depend on the input, tests/test_tiny_checkpoints.py) a padding, mask or
    position mistake moves these numbers even where the greedy tokens survive it."""
    steps_a = getattr(first, "logprobs", first)
    steps_b = getattr(second, "logprobs", second)
    assert steps_a and len(steps_a) == len(steps_b), f"{what}: {len(steps_a)} vs {len(steps_b)} steps with logprobs"
    for index, (a, b) in enumerate(zip(steps_a, steps_b)):
        assert a["token_id"] == b["token_id"], f"{what}: step {index} chose {a['token_id']} vs {b['token_id']}"
        assert abs(a["logprob"] - b["logprob"]) <= atol, f"{what}: step {index} logprob {a['logprob']} vs {b['logprob']}"
        top_a, top_b = a.get("top") or [], b.get("top") or []
        assert [t for t, _ in top_a] == [t for t, _ in top_b], f"{what}: step {index} top tokens differ"
        assert all(abs(x - y) <= atol for (_, x), (_, y) in zip(top_a, top_b)), f"{what}: step {index} top logprobs"


def assert_same_openai_logprobs(first, second, atol: float = 1e-4, what: str = "the two answers"):
    """Two OpenAI `logprobs.content` lists (from the SDK) agree token by token within `atol`."""
    assert first and len(first) == len(second), f"{what}: {len(first)} vs {len(second)} tokens with logprobs"
    for index, (a, b) in enumerate(zip(first, second)):
        assert a.token == b.token, f"{what}: token {index} is {a.token!r} vs {b.token!r}"
        assert abs(a.logprob - b.logprob) <= atol, f"{what}: token {index} logprob {a.logprob} vs {b.logprob}"
        assert [t.token for t in a.top_logprobs] == [t.token for t in b.top_logprobs], f"{what}: token {index} top"
        assert all(abs(x.logprob - y.logprob) <= atol for x, y in zip(a.top_logprobs, b.top_logprobs))


def check_generate_batch(model, template, image):
    """engine.generate runs a left-padded batch of an image row and a text row; each equals the row alone,
    step by step in logprobs, not only in tokens."""
    from swiftlite.engine.generate import SamplingParams, generate

    rows = [template.encode(Conversation([{"role": "user", "content": "<image>what colour is it?"}], [image])),
            template.encode(Conversation([{"role": "user", "content": "hello world"}]))]

    def params():
        return SamplingParams(max_new_tokens=5, temperature=0, logprobs=True, top_logprobs=3)

    results = generate(model, template, rows, [params() for _ in rows])
    assert len(results) == 2
    for row, result in zip(rows, results):
        assert result.prompt_tokens == len(row["input_ids"])
        assert result.finish_reason in ("stop", "length") and len(result.token_ids) <= 5
        alone = generate(model, template, [row], [params()])[0]
        assert alone.token_ids == result.token_ids
        assert_same_logprobs(result, alone, atol=1e-4, what="batched row vs the row alone")
    # The two rows' first steps differ, so a row answered from the wrong prompt would be seen.
    assert results[0].logprobs[0]["top"] != results[1].logprobs[0]["top"]
    return results


def check_prefixes(model, family):
    """Every parameter lives under one of the family's prefixes, and LoRA on the language model's linear layers
    (what `--target_modules all-linear` means) leaves the vision tower and the aligner unwrapped."""
    from peft import LoraConfig, get_peft_model

    prefixes = family.vision_tower + family.aligner + family.language_model + family.lm_head
    names = [name for name, _ in model.named_parameters()]
    uncovered = [n for n in names if not n.startswith(prefixes)]
    assert not uncovered, f"parameters outside the family's prefixes: {uncovered[:5]}"
    for prefixes_of_part in (family.vision_tower, family.aligner, family.language_model):
        for prefix in prefixes_of_part:
            assert any(n == prefix or n.startswith(prefix + ".") for n in names), f"no parameter under {prefix}"
    linear = [name for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and name.startswith(family.language_model)]
    assert linear
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=linear))
    try:
        wrapped = [name for name, _ in peft_model.named_modules() if name.endswith(".lora_A")]
        assert len(wrapped) == len(linear)
        vision_or_aligner = tuple("." + p + "." for p in family.vision_tower + family.aligner)
        assert not [n for n in wrapped if any(p in "." + n for p in vision_or_aligner)]
    finally:
        peft_model.unload()


def check_tiny_checkpoint(directory, config_class: str, special_tokens, image_token: str,
                          image_token_attr: str = "image_token_id"):
    """The tiny checkpoint loads like a user's: real config class, each special token one token, the config's
    image token id is the tokenizer's, under a million parameters."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

    config = AutoConfig.from_pretrained(directory)
    assert type(config).__name__ == config_class
    tokenizer = AutoTokenizer.from_pretrained(directory)
    for token in special_tokens:
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1, token
    assert getattr(config, image_token_attr) == tokenizer.convert_tokens_to_ids(image_token)
    model = AutoModelForImageTextToText.from_pretrained(directory)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
