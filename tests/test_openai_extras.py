"""The rest of the OpenAI API on `mm deploy` with a tiny random Qwen3: token-id prompts, echo (with the prompt's
logprobs, checked against the model's own forward pass), best_of > n, logprobs in every streamed chunk, assistant
prefill, system-only conversations, logit_bias (checked against the vocabulary), presence / frequency penalties,
and OpenAI's ranges as 400s naming the field."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from test_deploy_support import running_server

MODEL = "qwen3"


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    return build_tiny_checkpoint("qwen3", tmp_path_factory.mktemp("tiny") / "qwen3")


@pytest.fixture(scope="module", params=["static", "step"])
def server(qwen3_dir, request):
    # Both engines: the per-row features (echo scoring, logit_bias, penalties, streamed logprobs) live in the
    # shared row sampler, and each engine must call it the same way.
    with running_server(model=str(qwen3_dir), max_batch_size=8, engine=request.param) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key="EMPTY", base_url=server.base_url, max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(qwen3_dir):
    return AutoTokenizer.from_pretrained(qwen3_dir)


def test_token_id_prompts_equal_their_text(client, tokenizer):
    ids = tokenizer.encode("the red circle", add_special_tokens=False)
    by_text = client.completions.create(model=MODEL, prompt="the red circle", max_tokens=5, temperature=0)
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text and by_ids.usage.prompt_tokens == len(ids)
    several = client.completions.create(model=MODEL, prompt=[ids, ids[:2]], max_tokens=5, temperature=0)
    assert [c.index for c in several.choices] == [0, 1]
    assert several.choices[0].text == by_text.choices[0].text
    assert several.usage.prompt_tokens == len(ids) + 2


def test_echo_with_logprobs_scores_the_prompt_as_the_model_does(client, tokenizer, qwen3_dir):
    prompt = "a blue square"
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0, echo=True,
                                         logprobs=2)
    choice = response.choices[0]
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0)
    assert choice.text == prompt + plain.choices[0].text
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == len(ids) + 3 and logprobs.token_logprobs[0] is None
    model = AutoModelForCausalLM.from_pretrained(qwen3_dir)
    with torch.no_grad():
        expected = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    for position in range(1, len(ids)):
        assert math.isclose(logprobs.token_logprobs[position], float(expected[position - 1, ids[position]]),
                            abs_tol=1e-3)
    assert len(logprobs.top_logprobs[1]) == 2
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0, echo=True,
                                       stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == choice.text


def test_best_of_answers_the_likeliest_candidate(client):
    request = dict(model=MODEL, prompt="once", max_tokens=6, temperature=1.0, seed=21)
    candidates = client.completions.create(n=3, logprobs=0, **request).choices
    mean = [sum(c.logprobs.token_logprobs) / len(c.logprobs.token_logprobs) for c in candidates]
    best = client.completions.create(n=1, best_of=3, **request)
    assert len(best.choices) == 1 and best.choices[0].text == candidates[mean.index(max(mean))].text
    # Every candidate was generated (and counted), not only the one answered.
    assert best.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in candidates)


def test_every_streamed_chunk_carries_its_logprobs(client):
    request = dict(model=MODEL, messages=[{"role": "user", "content": "count"}], max_tokens=8, temperature=0,
                   logprobs=True, top_logprobs=2)
    whole = client.chat.completions.create(**request).choices[0].logprobs.content
    chunks = [chunk for chunk in client.chat.completions.create(stream=True, **request) if chunk.choices]
    with_text = [chunk for chunk in chunks if chunk.choices[0].delta.content]
    assert len(with_text) > 2
    assert all(chunk.choices[0].logprobs and chunk.choices[0].logprobs.content for chunk in with_text)
    streamed = [entry for chunk in chunks if chunk.choices[0].logprobs for entry in chunk.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in whole]
    completion = client.completions.create(model=MODEL, prompt="count", max_tokens=6, temperature=0, logprobs=1,
                                           stream=True)
    pieces = [chunk.choices[0] for chunk in completion if chunk.choices[0].text]
    assert pieces and all(piece.logprobs and piece.logprobs.tokens for piece in pieces)


def test_prefill_continues_the_last_assistant_message(client, tokenizer):
    messages = [{"role": "user", "content": "name a colour"}, {"role": "assistant", "content": "My answer is"}]
    response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3, temperature=0)
    official = tokenizer.apply_chat_template(messages, continue_final_message=True, tokenize=False)
    assert official.endswith("My answer is")
    assert response.usage.prompt_tokens == len(tokenizer.encode(official, add_special_tokens=False))
    raw = client.completions.create(model=MODEL, prompt=official, max_tokens=3, temperature=0)
    assert response.choices[0].message.content == raw.choices[0].text


def test_a_system_only_conversation_is_answered(client, tokenizer):
    messages = [{"role": "system", "content": "you are terse"}]
    response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3, temperature=0)
    official = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert response.usage.prompt_tokens == len(tokenizer.encode(official, add_special_tokens=False))
    assert response.choices[0].finish_reason in ("stop", "length")


def test_logit_bias_pushes_and_bans_tokens(client, tokenizer):
    request = dict(model=MODEL, prompt="hello", max_tokens=4, temperature=0, logprobs=0)
    plain = client.completions.create(**request).choices[0]
    target = tokenizer.convert_tokens_to_ids("x")
    pushed = client.completions.create(logit_bias={str(target): 100}, **request).choices[0]
    assert pushed.text == "xxxx"
    # logprobs.tokens are decoded text (' thi'), not the tokenizer's byte-level pieces ('Ġthi'): encode it back
    (first,) = tokenizer.encode(plain.logprobs.tokens[0], add_special_tokens=False)
    banned = client.completions.create(logit_bias={str(first): -100}, **request).choices[0]
    assert banned.logprobs.tokens[0] != plain.logprobs.tokens[0]


def test_presence_and_frequency_penalties_stop_repetition(client, tokenizer):
    request = dict(model=MODEL, prompt="the", max_tokens=12, temperature=0, logprobs=0)
    # A small push towards one token makes the greedy model repeat it; the penalties must break the repetition.
    repeat = {"logit_bias": {str(tokenizer.convert_tokens_to_ids("x")): 3}}
    plain = client.completions.create(**repeat, **request).choices[0].logprobs.tokens
    assert len(set(plain)) <= 2 and plain.count("x") >= 10
    for penalty in ("presence_penalty", "frequency_penalty"):
        penalised = client.completions.create(**{penalty: 2.0}, **repeat, **request).choices[0].logprobs.tokens
        assert len(set(penalised)) > len(set(plain)) + 3 and penalised.count("x") < 4, penalty
    # A negative penalty rewards what was said: the unbiased model, which varies its tokens, starts repeating.
    varied = client.completions.create(**request).choices[0].logprobs.tokens
    rewarded = client.completions.create(presence_penalty=-2.0, **request).choices[0].logprobs.tokens
    assert len(set(rewarded)) < len(set(varied))


@pytest.mark.parametrize("path, body, param", [
    ("/chat/completions", {"temperature": 2.5}, "temperature"),
    ("/chat/completions", {"seed": 2**64}, "seed"),
    ("/chat/completions", {"presence_penalty": 2.5}, "presence_penalty"),
    ("/chat/completions", {"frequency_penalty": -3}, "frequency_penalty"),
    ("/chat/completions", {"logit_bias": {"5": 101}}, "logit_bias"),
    ("/chat/completions", {"logit_bias": {"abc": 1}}, "logit_bias"),
    ("/chat/completions", {"logit_bias": {"100000": 1}}, "logit_bias"),
    ("/chat/completions", {"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
     "messages[1].role"),
    ("/completions", {"prompt": [1, -5]}, "prompt"),
    ("/completions", {"prompt": [[1, 2], []]}, "prompt"),
    ("/completions", {"prompt": [10**9]}, "prompt"),
    ("/completions", {"logprobs": 21}, "logprobs"),
    ("/completions", {"best_of": 1, "n": 2}, "best_of"),
    ("/completions", {"best_of": 3, "stream": True}, "best_of"),
])
def test_out_of_range_values_are_400s_naming_the_field(server, path, body, param):
    payload = {"model": MODEL, "max_tokens": 2}
    payload.update({"messages": [{"role": "user", "content": "hi"}]} if path == "/chat/completions"
                   else {"prompt": "hi"})
    payload.update(body)
    response = httpx.post(server.base_url + path, json=payload)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text
