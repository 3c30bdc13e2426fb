"""engine/generate.py: one batch, per-row settings, equal to plain generate, stop words, cancellation."""

from __future__ import annotations

import pytest
import torch

from family_checks import assert_same_logprobs
from swiftlite.conversation import conversation_from_query
from swiftlite.engine.generate import SamplingParams, generate
from swiftlite.models.checkpoint import load_for_inference


@pytest.fixture(scope="module")
def loaded(tiny_checkpoints):
    return {family: load_for_inference(model_id_or_path=str(path), dtype="fp32") for family, path in tiny_checkpoints.items()}


def rows_for(template, shape_images):
    queries = [f"Picture 1:<img>{shape_images['red']}</img>\nwhat colour is it?", "hello world",
               f"<img>{shape_images['green']}</img><img>{shape_images['blue']}</img>which is blue?"]
    return [template.encode(conversation_from_query(q)) for q in queries]


@pytest.mark.parametrize("family", ["qwen2-vl", "llava1_5"])
def test_greedy_batch_equals_each_row_alone_and_plain_generate(loaded, shape_images, family):
    model, template = loaded[family].model, loaded[family].template
    rows = rows_for(template, shape_images)
    greedy = dict(max_new_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    batched = generate(model, template, rows, [SamplingParams(**greedy) for _ in rows])
    for row, result in zip(rows, batched):
        alone = generate(model, template, [row], [SamplingParams(**greedy)])[0]
        assert result.token_ids == alone.token_ids
        assert_same_logprobs(result, alone, what="batched row vs the row alone")  # padding moves logprobs first
        batch = template.collate([row], padding_side="left")
        plain = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=template.pad_token_id,
                               eos_token_id=template.stop_token_ids(model.generation_config))
        expected = [t for t in plain[0, len(row["input_ids"]):].tolist() if t not in template.stop_token_ids()]
        assert result.token_ids == expected[: len(result.token_ids)] and len(result.token_ids) >= len(expected) - 1
        assert result.prompt_tokens == len(row["input_ids"])


def test_sampling_is_reproducible_per_row_seed(loaded):
    model, template = loaded["llava1_5"].model, loaded["llava1_5"].template
    row = template.encode(conversation_from_query("hello world"))
    first = generate(model, template, [row, row], [SamplingParams(max_new_tokens=8, temperature=1.0, seed=7),
                                                   SamplingParams(max_new_tokens=8, temperature=1.0, seed=8)])
    again = generate(model, template, [row], [SamplingParams(max_new_tokens=8, temperature=1.0, seed=7)])
    assert first[0].token_ids == again[0].token_ids
    assert first[0].token_ids != first[1].token_ids  # different seeds draw differently


def test_length_stop_words_and_streaming_deltas(loaded):
    model, template = loaded["llava1_5"].model, loaded["llava1_5"].template
    row = template.encode(conversation_from_query("hello world"))
    full = generate(model, template, [row], [SamplingParams(max_new_tokens=10, temperature=0)])[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 10
    stop_word = full.text[3:6]
    deltas: list[str] = []
    stopped = generate(model, template, [row], [SamplingParams(max_new_tokens=10, temperature=0, stop=[stop_word])],
                       on_delta=lambda r, d: deltas.append(d))[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.find(stop_word)]
    assert "".join(deltas) == stopped.text and stop_word not in "".join(deltas)


def test_cancelled_row_stops_and_others_continue(loaded):
    model, template = loaded["qwen2-vl"].model, loaded["qwen2-vl"].template
    row = template.encode(conversation_from_query("hello world"))
    steps = {"n": 0}

    def cancelled(index):
        steps["n"] += 1
        return index == 0 and steps["n"] > 4

    results = generate(model, template, [row, row], [SamplingParams(max_new_tokens=12, temperature=0)] * 2,
                       cancelled=cancelled)
    assert results[0].finish_reason == "cancelled" and len(results[0].token_ids) < 12
    assert results[1].finish_reason == "length" and len(results[1].token_ids) == 12


def test_logprobs_are_log_probabilities(loaded):
    model, template = loaded["llava1_5"].model, loaded["llava1_5"].template
    row = template.encode(conversation_from_query("hello"))
    result = generate(model, template, [row], [SamplingParams(max_new_tokens=3, temperature=0, logprobs=True, top_logprobs=2)])[0]
    assert len(result.logprobs) == 3
    for step, token in zip(result.logprobs, result.token_ids):
        assert step["token_id"] == token and step["logprob"] <= 0
        assert step["top"][0][0] == token  # greedy: the chosen token is the most likely
        assert torch.tensor([lp for _, lp in step["top"]]).exp().sum() <= 1.0 + 1e-5


def test_from_generation_config_defaults_and_overrides(loaded):
    config = loaded["qwen2-vl"].model.generation_config
    params = SamplingParams.from_generation_config(config, max_new_tokens=5)
    assert params.max_new_tokens == 5 and params.top_k == config.top_k
    assert SamplingParams.from_generation_config(config, temperature=0).sampling is False
