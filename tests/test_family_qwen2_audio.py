"""Qwen2-Audio: our encoding equals Qwen2AudioProcessor (ids with the audio-token expansion, input_features,
feature_attention_mask) with the checkpoint's chat template; the base model's raw format; labels; a train
step; batched generation; prefixes."""

from __future__ import annotations

import math
import wave

import numpy as np
import pytest
import torch

from family_checks import assert_same_logprobs, check_prefixes, official_processor
from swiftlite.conversation import Conversation
from swiftlite.models import FAMILIES, get_model_type
from swiftlite.models.loading import load_model, load_tokenizer, resolve_model
from swiftlite.templates import IGNORE_INDEX, Template, TemplateError, get_template
from swiftlite.testing.tiny import fixture_facts

RNG = np.random.default_rng(0)
ONE_S = (RNG.standard_normal(16000) * 0.1).astype(np.float32)
TWO_HALF_S = (RNG.standard_normal(40000) * 0.1).astype(np.float32)
SHORT = (RNG.standard_normal(5000) * 0.1).astype(np.float32)

BATTERY = {
    "text only": Conversation([{"role": "user", "content": "hello world"}]),
    "one audio": Conversation([{"role": "user", "content": "<audio>what is this sound?"}], audios=[ONE_S]),
    "two audios in one turn": Conversation(
        [{"role": "user", "content": "<audio>and<audio>which one is a dog?"}], audios=[ONE_S, TWO_HALF_S]),
    "multi-turn, audio in several turns": Conversation(
        [
            {"role": "user", "content": "<audio>what animal is it?"},
            {"role": "assistant", "content": "a cat"},
            {"role": "user", "content": "and this one? <audio>"},
            {"role": "assistant", "content": "a dog"},
            {"role": "user", "content": "<audio>and the last?"},
        ],
        audios=[ONE_S, TWO_HALF_S, SHORT],
    ),
    "system prompt": Conversation(
        [{"role": "system", "content": "answer in one word"}, {"role": "user", "content": "<audio>what sound?"}],
        audios=[SHORT]),
}


def training_conversation() -> Conversation:
    convo = BATTERY["multi-turn, audio in several turns"]
    return Conversation(convo.messages + [{"role": "assistant", "content": "a sheep"}], audios=convo.audios)


def official_messages(conversation: Conversation) -> list[dict]:
    """As users of the official processor write them: audio parts with an audio_url, as in its docstring."""
    messages = []
    for message in conversation.messages:
        parts = []
        for index, piece in enumerate(message["content"].split("<audio>")):
            if index:
                parts.append({"type": "audio", "audio_url": f"clip{index}.wav"})
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": message["role"], "content": parts})
    return messages


def official_encode(processor, conversation, add_generation_prompt):
    text = processor.apply_chat_template(official_messages(conversation), add_generation_prompt=add_generation_prompt,
                                         tokenize=False)
    return processor(text=[text], audio=list(conversation.audios) or None, sampling_rate=16000, return_tensors="pt")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    return build_tiny_checkpoint("qwen2-audio", tmp_path_factory.mktemp("qwen2_audio") / "ckpt")


@pytest.fixture(scope="module")
def bound(checkpoint):
    return get_template("qwen2-audio", load_tokenizer(checkpoint)), official_processor(checkpoint)


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint, FAMILIES["qwen2-audio"], torch.float32, device="cpu")


def test_registry_entries(checkpoint):
    instruct, base = get_model_type("qwen2-audio-7b-instruct"), get_model_type("qwen2-audio-7b")
    assert instruct.hf_id == "Qwen/Qwen2-Audio-7B-Instruct" and instruct.modelscope_id == "qwen/Qwen2-Audio-7B-Instruct"
    assert instruct.template_type == "qwen2-audio" and instruct.is_chat
    assert base.hf_id == "Qwen/Qwen2-Audio-7B" and base.template_type == "qwen2-audio-generation" and not base.is_chat
    resolved = resolve_model(model_id_or_path=str(checkpoint))
    assert resolved.family is FAMILIES["qwen2-audio"] and resolved.template_type == "qwen2-audio"
    assert resolve_model("qwen2-audio-7b", str(checkpoint)).template_type == "qwen2-audio-generation"


@pytest.mark.parametrize("case", list(BATTERY))
def test_generation_prompt_matches_official_processor(bound, case):
    template, processor = bound
    conversation = BATTERY[case]
    ours = template.encode(conversation)
    official = official_encode(processor, conversation, add_generation_prompt=True)
    assert ours["input_ids"] == official["input_ids"][0].tolist()
    assert "labels" not in ours
    if conversation.audios:
        for key in ("input_features", "feature_attention_mask"):
            assert ours[key].dtype == official[key].dtype and torch.equal(ours[key], official[key]), key
        audio_id = template.token_id("<|AUDIO|>")
        assert ours["input_ids"].count(audio_id) > len(conversation.audios)  # expanded, not one per clip
    else:
        assert "input_features" not in ours


EXPECTED = {1.0: 25, 30.0: 750, 41.0: 750}  # 40 ms per token; the feature extractor keeps the first 30 s


def test_token_count_rule_matches_processor_on_many_lengths(bound):
    template, processor = bound
    for seconds in (0.3, 1.0, 2.5, 7.31, 30.0, 41.0):
        clip = np.zeros(int(seconds * 16000), dtype=np.float32)
        row = template.encode(Conversation([{"role": "user", "content": "<audio>hi"}], audios=[clip]))
        official = processor(text=["<|audio_bos|><|AUDIO|><|audio_eos|>hi"], audio=[clip], sampling_rate=16000)
        count = row["input_ids"].count(template.token_id("<|AUDIO|>"))
        assert count == official["input_ids"][0].count(template.token_id("<|AUDIO|>")), seconds
        if seconds in EXPECTED:
            assert count == EXPECTED[seconds], seconds


def test_hub_era_template_variant_renders_the_same(bound):
    # The hub tokenizer may carry the older text, which recognises audio parts by an 'audio'/'audio_url' key only.
    template, processor = bound
    hub_era = fixture_facts("qwen2-audio")["chat_template"]["variants"]["original_hub_era"]
    variant = Template(template.meta, template.tokenizer, feature_extractor=template.feature_extractor,
                       chat_template=hub_era)
    for case in ("one audio", "multi-turn, audio in several turns"):
        assert variant.encode(BATTERY[case])["input_ids"] == template.encode(BATTERY[case])["input_ids"]


def test_labels_cover_exactly_the_assistant_replies(bound):
    template, processor = bound
    tokenizer = template.tokenizer
    row = template.encode(training_conversation())
    ids, labels = row["input_ids"], row["labels"]
    labelled = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in labelled)
    runs = [[labelled[0]]]
    for previous, index in zip(labelled, labelled[1:]):
        runs[-1].append(index) if index == previous + 1 else runs.append([index])
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert [tokenizer.decode([ids[i] for i in run[:-1]]) for run in runs] == ["a cat", "a dog", "a sheep"]
    assert all(ids[run[-1]] == end_id for run in runs)
    official = official_encode(processor, training_conversation(), add_generation_prompt=False)
    assert ids == official["input_ids"][0].tolist()


def test_audio_file_paths_are_decoded_and_resampled(bound, tmp_path):
    from swiftlite.media import MediaError

    template, processor = bound
    path = tmp_path / "tone.wav"
    samples = (np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000) * 12000).astype("<i2")  # 1 s at 8 kHz
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(8000)
        out.writeframes(samples.tobytes())
    row = template.encode(Conversation([{"role": "user", "content": "<audio>what is it?"}], audios=[str(path)]))
    assert int(row["feature_attention_mask"].sum()) == 100  # 1 s at 16 kHz after resampling
    assert row["input_ids"].count(template.token_id("<|AUDIO|>")) == 25
    with pytest.raises(MediaError, match="2 <audio> placeholders but 1 audio"):
        template.encode(Conversation([{"role": "user", "content": "<audio><audio>hi"}], audios=[str(path)]))


def test_base_model_uses_the_raw_prompt_format(checkpoint, bound):
    _, processor = bound
    base = get_template("qwen2-audio-generation", load_tokenizer(checkpoint))
    assert base.chat_template != base.tokenizer.chat_template  # the raw format wins over the shipped template
    prompt = "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:"  # the model card's example
    official = processor(text=[prompt], audio=[ONE_S], sampling_rate=16000, return_tensors="pt")
    chat = base.encode(Conversation([{"role": "user", "content": "<audio>Generate the caption in English:"}],
                                    audios=[ONE_S]))
    raw = base.encode_raw("<audio>Generate the caption in English:", audios=[ONE_S])
    assert chat["input_ids"] == raw["input_ids"] == official["input_ids"][0].tolist()
    assert torch.equal(chat["input_features"], official["input_features"])

    row = base.encode(Conversation([{"role": "user", "content": "<audio>Caption:"},
                                    {"role": "assistant", "content": "a dog barks"}], audios=[ONE_S]))
    tokenizer = base.tokenizer
    labelled = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
    assert labelled[-1] == tokenizer.eos_token_id and tokenizer.decode(labelled[:-1]).strip() == "a dog barks"
    with pytest.raises(TemplateError, match="no system prompt"):
        base.encode(Conversation([{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]))


def test_train_step_generate_and_prefixes(bound, model):
    from swiftlite.engine.generate import SamplingParams, generate

    template, _ = bound
    rows = [template.encode(training_conversation()),
            template.encode(Conversation([{"role": "user", "content": "hello world"},
                                          {"role": "assistant", "content": "yes"}]))]
    batch = template.collate(rows, padding_side="right")
    assert batch["input_features"].shape == (3, 128, 3000) and batch["feature_attention_mask"].shape == (3, 3000)
    model.train()
    try:
        loss = model(**batch).loss
        assert math.isfinite(loss.item())
        loss.backward()
    finally:
        model.eval()
    grads = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("model.multi_modal_projector") for n in grads)  # the audio reaches the loss
    assert any(n.startswith("model.language_model") for n in grads)
    model.zero_grad()

    # A left-padded batch of an audio row and a text row: each row equals the row alone step by step in logprobs.
    def params():
        return SamplingParams(max_new_tokens=4, temperature=0, logprobs=True, top_logprobs=3)

    prompts = [template.encode(BATTERY["one audio"]), template.encode(BATTERY["text only"])]
    results = generate(model, template, prompts, [params() for _ in prompts])
    for row, result in zip(prompts, results):
        assert result.prompt_tokens == len(row["input_ids"]) and 1 <= len(result.token_ids) <= 4
        alone = generate(model, template, [row], [params()])[0]
        assert_same_logprobs(result, alone, what="batched row vs the row alone")
    assert results[0].logprobs[0]["top"] != results[1].logprobs[0]["top"]  # the audio row answers its own prompt
    check_prefixes(model, FAMILIES["qwen2-audio"])


def test_checkpoint_carries_the_real_facts(checkpoint):
    from transformers import AutoConfig, AutoFeatureExtractor, AutoTokenizer

    facts = fixture_facts("qwen2-audio")
    config = AutoConfig.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    first = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    for token in facts["tokenizer"]["added_tokens"]:
        assert tokenizer.convert_tokens_to_ids(token["content"]) - first == token["id"] - 151643, token["content"]
    assert config.audio_token_index == tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert config.audio_config.num_mel_bins == 128 and config.audio_config.max_source_positions == 1500
    extractor = AutoFeatureExtractor.from_pretrained(checkpoint)
    assert type(extractor).__name__ == "WhisperFeatureExtractor"
    assert (extractor.feature_size, extractor.sampling_rate, extractor.n_samples) == (128, 16000, 480000)
