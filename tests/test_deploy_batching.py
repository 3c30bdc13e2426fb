"""The batching engine behind `mm deploy`: concurrent requests share batches without changing any answer,
many clients are served at once, and a client that leaves stops its generation and frees its place."""

from __future__ import annotations

import base64
import concurrent.futures
import threading
import time

import httpx
import openai
import pytest

from family_checks import assert_same_openai_logprobs
from test_deploy_support import make_lora, metric, running_server


def batch_histogram(server) -> tuple[float, float]:
    """(batches of exactly one row, all batches) from GET /metrics."""
    text = httpx.get(server.url + "/metrics").text
    single = next(line for line in text.splitlines() if line.startswith('swiftlite_batch_size_bucket{le="1.0"}'))
    count = next(line for line in text.splitlines() if line.startswith("swiftlite_batch_size_count"))
    return float(single.split()[-1]), float(count.split()[-1])


@pytest.fixture
def family_server(tiny_family, tmp_path):
    family, model_dir = tiny_family
    lora = make_lora(model_dir, tmp_path / "lora", seed=3)
    # A long batch wait makes the concurrent requests below meet in a batch even on a busy machine.
    with running_server(model=str(model_dir), lora_modules=[f"tuned={lora}"], max_batch_size=8,
                        batch_wait_ms=300, max_new_tokens=6) as running:
        yield family, running


def test_batched_greedy_answers_equal_the_same_requests_alone(family_server, shape_images):
    family, server = family_server
    model = server.app.state.server.models[0].name
    client = openai.OpenAI(api_key="EMPTY", base_url=server.base_url, max_retries=0)

    def image(name):
        return {"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(shape_images[name].read_bytes()).decode()}}

    requests = [  # different lengths (padding), images or none, base or adapter, one with two choices
        dict(model=model, messages=[{"role": "user", "content": "hello"}]),
        dict(model=model, messages=[{"role": "user", "content": [image("red"), {"type": "text", "text": "what is it"}]}]),
        dict(model="tuned", messages=[{"role": "user", "content": "which shape and colour do you see in the picture"}]),
        dict(model="tuned", messages=[{"role": "user", "content": [image("blue"), {"type": "text", "text": "colour"}]}]),
        dict(model=model, messages=[{"role": "user", "content": "a red circle a green square a blue triangle"}], n=2),
        dict(model=model, messages=[{"role": "user", "content": [image("green"), {"type": "text", "text": "shape"}]}]),
    ]

    def answer(request):
        response = client.chat.completions.create(temperature=0, logprobs=True, **request)
        return [choice.logprobs.content for choice in response.choices]

    def tokens(answers):
        return [[step.token for step in choice] for choice in answers]

    alone = [answer(request) for request in requests]
    singles_before, batches_before = batch_histogram(server)
    barrier = threading.Barrier(len(requests))

    def together(request):
        barrier.wait()
        return answer(request)

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        batched = list(pool.map(together, requests))
    singles_after, batches_after = batch_histogram(server)
    assert batches_after - batches_before < len(requests)  # some requests did share a batch
    assert batches_after - batches_before > singles_after - singles_before
    for index, (together_answer, alone_answer) in enumerate(zip(batched, alone)):
        assert tokens(together_answer) == tokens(alone_answer)
        for choice_together, choice_alone in zip(together_answer, alone_answer):  # and step by step in logprobs
            assert_same_openai_logprobs(choice_together, choice_alone, what=f"request {index} batched vs alone")
    assert tokens(alone[4])[0] == tokens(alone[4])[1]  # greedy: both choices of the n=2 request agree
    assert tokens(alone[0]) != tokens(alone[2])  # the adapter does change the answer


@pytest.fixture(scope="module")
def busy_server(qwen2_vl_dir):
    with running_server(model=str(qwen2_vl_dir), max_batch_size=16, max_new_tokens=8) as running:
        yield running


def test_sixteen_concurrent_clients_all_succeed(busy_server):
    client = openai.OpenAI(api_key="EMPTY", base_url=busy_server.base_url, max_retries=0)
    messages = [{"role": "user", "content": "describe the picture"}]
    expected = client.chat.completions.create(model="qwen2-vl", messages=messages, temperature=0).choices[0]
    barrier = threading.Barrier(16)

    def one_client(index):
        barrier.wait()
        texts = []
        for _ in range(2):
            if index % 2:
                stream = client.chat.completions.create(model="qwen2-vl", messages=messages, temperature=0,
                                                        stream=True)
                texts.append("".join(chunk.choices[0].delta.content or "" for chunk in stream))
            else:
                response = client.chat.completions.create(model="qwen2-vl", messages=messages, temperature=0)
                texts.append(response.choices[0].message.content)
        return texts

    singles_before, batches_before = batch_histogram(busy_server)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one_client, range(16)))
    assert all(texts == [expected.message.content] * 2 for texts in results)
    singles_after, batches_after = batch_histogram(busy_server)
    assert batches_after - batches_before < 32  # 32 requests ran in fewer batches


@pytest.fixture(scope="module")
def one_slot_server(qwen2_vl_dir):
    with running_server(model=str(qwen2_vl_dir), max_batch_size=1) as running:
        yield running


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
def test_a_client_that_disconnects_frees_its_slot(one_slot_server, stream):
    server = one_slot_server
    url = server.base_url + "/chat/completions"
    body = {"model": "qwen2-vl", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4000,
            "temperature": 0, "stream": stream}
    cancelled_before = metric(server, "swiftlite_requests_cancelled_total")
    tokens_before = metric(server, "swiftlite_generation_tokens_total")
    with httpx.Client(timeout=60) as http:
        if stream:
            with http.stream("POST", url, json=body) as response:
                assert response.status_code == 200
                wait_for(lambda: metric(server, "swiftlite_running_rows") == 1)
        else:  # a client that gives up waiting: its read times out and it closes the connection
            with pytest.raises(httpx.ReadTimeout):
                http.post(url, json=body, timeout=httpx.Timeout(60, read=0.5))
    wait_for(lambda: metric(server, "swiftlite_requests_cancelled_total") == cancelled_before + 1)
    # The one slot is free again: the next request is answered at once, not after 4000 tokens.
    started = time.monotonic()
    quick = httpx.post(url, json={**body, "max_tokens": 2, "stream": False}, timeout=60)
    assert quick.status_code == 200 and time.monotonic() - started < 20
    assert metric(server, "swiftlite_generation_tokens_total") - tokens_before < 2500
    assert metric(server, "swiftlite_running_rows") == 0
