"""Text-only Qwen2.5 and Qwen3: our encoding equals the tokenizer's own apply_chat_template (the official path
for text LLMs); labels; a train step; batched generation; LoRA prefixes with no vision tower at all."""

from __future__ import annotations

import math

import pytest
import torch

from family_checks import RED, assert_same_logprobs, check_prefixes
from swiftlite.conversation import Conversation
from swiftlite.models import FAMILIES, get_model_type
from swiftlite.models.loading import load_model, load_tokenizer, resolve_model
from swiftlite.templates import IGNORE_INDEX, TemplateError, get_template

TEXT_FAMILIES = ("qwen2_5", "qwen3")

BATTERY = {
    "one turn": Conversation([{"role": "user", "content": "hello world"}]),
    "system prompt": Conversation([{"role": "system", "content": "answer in one word"},
                                   {"role": "user", "content": "what colour is the sky?"}]),
    "multi-turn": Conversation([
        {"role": "user", "content": "what shape is it?"}, {"role": "assistant", "content": "a circle"},
        {"role": "user", "content": "and the colour?"},
    ]),
    "special-looking text": Conversation([{"role": "user", "content": "say <tool_call> and <|im_start|> literally"}]),
}


def training_conversation() -> Conversation:
    return Conversation([
        {"role": "system", "content": "answer in one word"},
        {"role": "user", "content": "what shape is it?"}, {"role": "assistant", "content": "circle"},
        {"role": "user", "content": "and the colour?"}, {"role": "assistant", "content": "red"},
    ])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("qwen_text")
    return {family: build_tiny_checkpoint(family, root / family) for family in TEXT_FAMILIES}


@pytest.fixture(scope="module")
def templates(checkpoints):
    return {family: get_template(FAMILIES[family].template, load_tokenizer(directory))
            for family, directory in checkpoints.items()}


def official_ids(template, conversation, add_generation_prompt):
    # For a text LLM the official "processor" is the tokenizer: render its chat template and tokenize.
    return template.tokenizer.apply_chat_template(conversation.messages, add_generation_prompt=add_generation_prompt,
                                                  tokenize=True, return_dict=True)["input_ids"]


def test_registry_entries(checkpoints):
    for name, hf_id in (("qwen2_5-0_5b-instruct", "Qwen/Qwen2.5-0.5B-Instruct"),
                        ("qwen2_5-1_5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct"),
                        ("qwen2_5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct"),
                        ("qwen3-0_6b", "Qwen/Qwen3-0.6B"), ("qwen3-1_7b", "Qwen/Qwen3-1.7B"),
                        ("qwen3-4b", "Qwen/Qwen3-4B"), ("qwen3-8b", "Qwen/Qwen3-8B")):
        spec = get_model_type(name)
        assert spec.hf_id == hf_id and spec.modelscope_id == hf_id
        assert spec.family.modalities == ("text",) and spec.family.auto_class == "AutoModelForCausalLM"
        assert not spec.family.vision_tower and not spec.family.aligner
    for family, directory in checkpoints.items():
        resolved = resolve_model(model_id_or_path=str(directory))
        assert resolved.family is FAMILIES[family] and resolved.template_type == family


@pytest.mark.parametrize("case", list(BATTERY))
@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_generation_prompt_matches_the_tokenizer_template(templates, family, case):
    template = templates[family]
    ours = template.encode(BATTERY[case])
    assert ours["input_ids"] == official_ids(template, BATTERY[case], add_generation_prompt=True)
    assert set(ours) == {"input_ids", "attention_mask"}


def test_default_system_prompt_per_family(templates):
    decoded = {family: templates[family].tokenizer.decode(templates[family].encode(BATTERY["one turn"])["input_ids"])
               for family in TEXT_FAMILIES}
    assert decoded["qwen2_5"].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert decoded["qwen3"] == "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_labels_cover_exactly_the_assistant_replies(templates, family):
    template = templates[family]
    tokenizer = template.tokenizer
    row = template.encode(training_conversation())
    ids, labels = row["input_ids"], row["labels"]
    assert ids == official_ids(template, training_conversation(), add_generation_prompt=False)
    labelled = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in labelled)
    runs = [[labelled[0]]]
    for previous, index in zip(labelled, labelled[1:]):
        runs[-1].append(index) if index == previous + 1 else runs.append([index])
    assert [tokenizer.decode([ids[i] for i in run[:-1]]) for run in runs] == ["circle", "red"]
    assert all(ids[run[-1]] == tokenizer.convert_tokens_to_ids("<|im_end|>") for run in runs)


def test_images_are_refused_by_text_only_models(templates):
    with pytest.raises(TemplateError, match="takes no images"):
        templates["qwen2_5"].encode(Conversation([{"role": "user", "content": "<image>what?"}], [RED]))


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_train_step_generate_and_prefixes(checkpoints, templates, family):
    from swiftlite.engine.generate import SamplingParams, generate

    template = templates[family]
    model = load_model(checkpoints[family], FAMILIES[family], torch.float32, device="cpu")
    rows = [template.encode(training_conversation()),
            template.encode(Conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]))]
    batch = template.collate(rows, padding_side="right")
    model.train()
    loss = model(**batch).loss
    assert math.isfinite(loss.item())
    loss.backward()
    model.eval()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    model.zero_grad()

    # A left-padded batch of two prompts: each row equals the row alone step by step in logprobs.
    def params():
        return SamplingParams(max_new_tokens=4, temperature=0, logprobs=True, top_logprobs=3)

    prompts = [template.encode(BATTERY["multi-turn"]), template.encode(BATTERY["one turn"])]
    results = generate(model, template, prompts, [params() for _ in prompts])
    for row, result in zip(prompts, results):
        assert result.prompt_tokens == len(row["input_ids"]) and 1 <= len(result.token_ids) <= 4
        alone = generate(model, template, [row], [params()])[0]
        assert_same_logprobs(result, alone, what="batched row vs the row alone")
    assert results[0].logprobs[0]["top"] != results[1].logprobs[0]["top"]  # each row answers its own prompt
    check_prefixes(model, FAMILIES[family])


def test_fallback_template_when_the_checkpoint_ships_none(checkpoints):
    # A checkpoint without a chat template still gets ChatML (Qwen3's without a default system prompt).
    tokenizer = load_tokenizer(checkpoints["qwen3"])
    tokenizer.chat_template = None
    template = get_template("qwen3", tokenizer)
    assert template.tokenizer.decode(template.encode(BATTERY["one turn"])["input_ids"]) == (
        "<|im_start|>user\nhello world<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("family,fixture", [("qwen2_5", "qwen2.5-vl"), ("qwen3", "qwen3-vl")])
def test_checkpoint_carries_the_real_tokens(checkpoints, family, fixture):
    from transformers import AutoConfig, AutoTokenizer

    from swiftlite.testing.tiny import fixture_facts

    tokenizer = AutoTokenizer.from_pretrained(checkpoints[family])
    first = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for token in fixture_facts(fixture)["tokenizer"]["added_tokens"]:  # the text LLMs share these vocabularies
        assert tokenizer.convert_tokens_to_ids(token["content"]) - first == token["id"] - 151643, token["content"]
    config = AutoConfig.from_pretrained(checkpoints[family])
    assert config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert type(config).__name__ == {"qwen2_5": "Qwen2Config", "qwen3": "Qwen3Config"}[family]


# The shape of Qwen3's hub template, reduced to the one behaviour that matters here (a synthetic template, not
# the hub text): only a reply after the last user query gets an empty <think> block.
LAST_REPLY_THINKS = (
    "{% set ns = namespace(last_query=0) %}{% for message in messages %}{% if message.role == 'user' %}"
    "{% set ns.last_query = loop.index0 %}{% endif %}{% endfor %}"
    "{% for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.role == 'assistant' and loop.index0 > ns.last_query %}<think>\n\n</think>\n\n{% endif %}"
    "{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_multi_turn_labels_when_only_the_last_reply_thinks(checkpoints):
    tokenizer = load_tokenizer(checkpoints["qwen3"])
    tokenizer.chat_template = LAST_REPLY_THINKS
    template = get_template("qwen3", tokenizer)
    row = template.encode(training_conversation())
    assert row["input_ids"] == official_ids(template, training_conversation(), add_generation_prompt=False)
    labelled = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
    # The earlier reply as the model sees it in history; the last one with its (empty) thinking block.
    assert tokenizer.decode(labelled) == "circle<|im_end|><think>\n\n</think>\n\nred<|im_end|>"
    # Without the Qwen3 setting the same template is refused rather than guessed at.
    strict = get_template("qwen2_5", tokenizer)
    with pytest.raises(TemplateError, match="prefix"):
        strict.encode(training_conversation())
