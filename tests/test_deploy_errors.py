"""Bad requests: each gets its 4xx status and OpenAI's error shape, with a message that names the problem.

4xx, not 5xx, for every client fault: the openai SDK retries 5xx three times before the user sees anything.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import httpx
import openai
import pytest

from test_deploy_support import metric, running_server, static_http_server

MODEL = "qwen2-vl"
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def media_host(tmp_path_factory, shape_images):
    root = tmp_path_factory.mktemp("media")
    (root / "red.png").write_bytes(shape_images["red"].read_bytes())
    (root / "notes.txt").write_text("this is not an image")
    with static_http_server(root) as url:
        yield url


@pytest.fixture(scope="module")
def strict(qwen2_vl_dir):
    # The test's media server is on loopback, which a server fetches from only when told (--allowed_media_domains).
    with running_server(model=str(qwen2_vl_dir), limit_mm_per_prompt="image=1", max_model_len=64,
                        max_request_bytes=64 * 1024, max_batch_size=4,
                        allowed_media_domains=["127.0.0.1"]) as running:
        yield running


def user(content):
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 2}


def image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}



# (case, endpoint, body, status, param, words the message must contain)
CASES = [
    ("body not json", "chat", b"{not json", 400, None, "not valid JSON"),
    ("body a list", "chat", [1, 2], 400, None, "JSON object"),
    ("no messages", "chat", {"model": MODEL}, 400, "messages", "'messages'"),
    ("empty messages", "chat", {"model": MODEL, "messages": []}, 400, "messages", "non-empty"),
    ("tool message without a call", "chat", {"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role",
     "tool_calls"),
    ("function role", "chat", {"messages": [{"role": "function", "content": "x"}]}, 400, "messages[0].role",
     "'function'"),
    ("content a number", "chat", user(5), 400, "messages[0].content", "string or a list"),
    ("part without url", "chat", user([{"type": "image_url", "image_url": {}}]), 400, "messages[0].content", "URL"),
    ("unknown part type", "chat", user([{"type": "input_file", "input_file": "x"}]), 400, "messages[0].content",
     "unsupported type 'input_file'"),
    ("bad base64 image", "chat", user([image_part("data:image/png;base64,!!!notbase64!!!")]), 400, "messages",
     "invalid base64"),
    ("bytes that are no image", "chat", user([image_part("data:image/png;base64," + base64.b64encode(b"hello").decode())]),
     400, "messages", "cannot decode image"),
    ("local path refused", "chat", user("<img>/etc/hostname</img>what"), 400, "messages", "--allowed_local_media_path"),
    ("file url refused", "chat", user([image_part("file:///etc/hostname")]), 400, "messages",
     "--allowed_local_media_path"),
    ("unsupported scheme", "chat", user([image_part("ftp://example.com/a.png")]), 400, "messages", "scheme 'ftp'"),
    ("url not found", "chat", "MEDIA/missing.png", 400, "messages", "refused or failed"),
    ("url not an image", "chat", "MEDIA/notes.txt", 400, "messages", "cannot decode image from http://127.0.0.1:"),
    ("too many images", "chat", "TWO_IMAGES", 400, "messages", "--limit_mm_per_prompt image=1"),
    ("placeholder without image", "chat", user("<image>what is it"), 400, "messages", "placeholders"),
    ("prompt over max_model_len", "chat", user("hello world " * 40), 400, "messages", "maximum context length is 64"),
    ("max_tokens over max_model_len", "chat", {**user("hi"), "max_tokens": 60}, 400, "max_tokens", "lower max_tokens"),
    ("max_tokens zero", "chat", {**user("hi"), "max_tokens": 0}, 400, "max_tokens", "at least 1"),
    ("max_tokens text", "chat", {**user("hi"), "max_tokens": "ten"}, 400, "max_tokens", "integer"),
    ("temperature negative", "chat", {**user("hi"), "temperature": -1}, 400, "temperature", "at least 0"),
    ("top_p zero", "chat", {**user("hi"), "top_p": 0}, 400, "top_p", "greater than 0"),
    ("top_k below -1", "chat", {**user("hi"), "top_k": -2}, 400, "top_k", "at least -1"),
    ("n zero", "chat", {**user("hi"), "n": 0}, 400, "n", "at least 1"),
    ("n over batch size", "chat", {**user("hi"), "n": 5}, 400, "n", "--max_batch_size 4"),
    # presence/frequency penalties, tools, response_format and logit_bias are supported (tests/test_openai_*.py,
    # test_structured_outputs.py); out of range they are 400s naming the field.
    ("presence_penalty over 2", "chat", {**user("hi"), "presence_penalty": 2.5}, 400, "presence_penalty",
     "at most 2"),
    ("frequency_penalty under -2", "chat", {**user("hi"), "frequency_penalty": -3}, 400, "frequency_penalty",
     "at least -2"),
    ("tools not a list", "chat", {**user("hi"), "tools": {"name": "f"}}, 400, "tools", "must be a list"),
    ("response_format unknown", "chat", {**user("hi"), "response_format": {"type": "yaml"}}, 400,
     "response_format.type", "json_schema"),
    ("logit_bias over 100", "chat", {**user("hi"), "logit_bias": {"1": 500}}, 400, "logit_bias", "-100 to 100"),
    ("unknown field", "chat", {**user("hi"), "temprature": 0.5}, 400, "temprature", "unknown field"),
    ("empty stop word", "chat", {**user("hi"), "stop": [""]}, 400, "stop", "non-empty"),
    ("stop a number", "chat", {**user("hi"), "stop": 5}, 400, "stop", "non-empty string"),
    ("stream_options without stream", "chat", {**user("hi"), "stream_options": {"include_usage": True}}, 400,
     "stream_options", "only allowed"),
    ("top_logprobs without logprobs", "chat", {**user("hi"), "top_logprobs": 2}, 400, "top_logprobs", "logprobs"),
    ("images not a list", "chat", {**user("hi"), "images": "a.png"}, 400, "images", "list"),
    ("unknown model", "chat", {**user("hi"), "model": "gpt-4o"}, 404, "model", "'gpt-4o' is not served here"),
    ("completion without prompt", "completion", {"model": MODEL}, 400, "prompt", "'prompt'"),
    ("completion token id outside the vocabulary", "completion", {"model": MODEL, "prompt": [1, 2, 10**9]}, 400,
     "prompt", "outside this model's vocabulary"),
    ("completion echo not a boolean", "completion", {"model": MODEL, "prompt": "a", "echo": "yes"}, 400, "echo",
     "true or false"),
    ("completion best_of under n", "completion", {"model": MODEL, "prompt": "a", "best_of": 1, "n": 2}, 400,
     "best_of", "at least n"),
    ("completion images with two prompts", "completion", {"model": MODEL, "prompt": ["a", "b"], "images": ["x"]},
     400, "images", "single prompt"),
    ("completion logprobs over 20", "completion", {"model": MODEL, "prompt": "a", "logprobs": 21}, 400, "logprobs",
     "at most 20"),
]


def check_error_shape(response, status):
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"error"} and set(payload["error"]) == ERROR_KEYS
    assert isinstance(payload["error"]["message"], str) and payload["error"]["message"]
    assert isinstance(payload["error"]["type"], str)
    return payload["error"]


@pytest.mark.parametrize("case,endpoint,body,status,param,words", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_its_status_and_error_shape(strict, media_host, shape_images, case, endpoint, body, status,
                                                     param, words):
    red = "data:image/png;base64," + base64.b64encode(shape_images["red"].read_bytes()).decode()
    if body == "TWO_IMAGES":
        body = user([image_part(red), image_part(red), {"type": "text", "text": "compare"}])
    elif isinstance(body, str) and body.startswith("MEDIA/"):
        body = user([image_part(media_host + body[len("MEDIA"):])])
    url = strict.base_url + ("/chat/completions" if endpoint == "chat" else "/completions")
    if isinstance(body, bytes):
        response = httpx.post(url, content=body, headers={"content-type": "application/json"})
    else:
        response = httpx.post(url, json=body)
    error = check_error_shape(response, status)
    assert words in error["message"]
    assert error["param"] == param
    assert "\n" not in error["message"] and len(error["message"]) < 400


def test_body_over_max_request_bytes_is_413(strict):
    body = user("x" * (80 * 1024))
    error = check_error_shape(httpx.post(strict.base_url + "/chat/completions", json=body), 413)
    assert "--max_request_bytes" in error["message"]


def test_unknown_route_and_wrong_method_use_the_error_shape(strict):
    check_error_shape(httpx.get(strict.base_url + "/nothing"), 404)
    check_error_shape(httpx.get(strict.base_url + "/chat/completions"), 405)


def test_openai_sdk_sends_a_bad_request_once(strict):
    """With its default retries the SDK would repeat a 5xx; a 4xx reaches the server exactly once."""
    def bad_requests():
        line = next(line for line in httpx.get(strict.url + "/metrics").text.splitlines()
                    if line.startswith('swiftlite_requests_total{endpoint="/v1/chat/completions",status="400"}'))
        return float(line.split()[-1])

    before = bad_requests()
    client = openai.OpenAI(api_key="EMPTY", base_url=strict.base_url)  # default max_retries=2
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": [
            image_part("data:image/png;base64,aGVsbG8=")]}])
    assert raised.value.status_code == 400 and "cannot decode image" in raised.value.message
    assert bad_requests() == before + 1


@pytest.fixture(scope="module")
def guarded(qwen2_vl_dir):
    with running_server(model=str(qwen2_vl_dir), api_key="sekret", media_fetch=False, max_batch_size=1,
                        max_queue=1, max_new_tokens=4000) as running:
        yield running


def test_api_key_is_required_on_v1_routes_only(guarded):
    body = user("hi")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sekret"}):
        error = check_error_shape(httpx.post(guarded.base_url + "/chat/completions", json=body, headers=headers), 401)
        assert "--api_key" in error["message"] and error["code"] == "invalid_api_key"
    check_error_shape(httpx.get(guarded.base_url + "/models"), 401)
    ok = httpx.post(guarded.base_url + "/chat/completions", json=body, headers={"Authorization": "Bearer sekret"})
    assert ok.status_code == 200
    assert httpx.get(guarded.url + "/health").status_code == 200
    assert httpx.get(guarded.url + "/metrics").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="EMPTY", base_url=guarded.base_url, max_retries=0).models.list()


def test_media_fetch_false_refuses_urls(guarded):
    body = user([image_part("http://127.0.0.1:9/red.png"), {"type": "text", "text": "what"}])
    response = httpx.post(guarded.base_url + "/chat/completions", json=body,
                          headers={"Authorization": "Bearer sekret"})
    assert "--media_fetch false" in check_error_shape(response, 400)["message"]


def test_full_queue_gets_429_and_frees_when_the_stream_leaves(guarded):
    headers = {"Authorization": "Bearer sekret"}
    long_body = {**user("hello"), "max_tokens": 3000, "stream": True}
    url = guarded.base_url + "/chat/completions"
    with httpx.Client(timeout=60, headers=headers) as http:
        with http.stream("POST", url, json=long_body) as running:  # takes the one batch slot
            deadline = time.monotonic() + 30
            while metric(guarded, "swiftlite_running_rows") < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            queued_result = {}
            queued = threading.Thread(target=lambda: queued_result.update(
                response=httpx.post(url, json=user("hi"), headers=headers, timeout=120)))
            queued.start()  # waits in the queue of one
            deadline = time.monotonic() + 30
            while metric(guarded, "swiftlite_queue_length") < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            error = check_error_shape(http.post(url, json=user("hi")), 429)
            assert error["code"] == "queue_full" and "--max_queue 1" in error["message"]
        # Leaving the stream cancels its generation, so the queued request runs now instead of after 3000 tokens.
        queued.join(60)
    assert not queued.is_alive() and queued_result["response"].status_code == 200
    assert metric(guarded, "swiftlite_requests_cancelled_total") >= 1


def test_a_failure_after_the_stream_started_is_an_error_event(qwen2_vl_dir, monkeypatch):
    """Fault injection: the real generate, whose third token report raises (as a CUDA error would mid-batch)."""
    import swiftlite.engine.worker as worker

    real_generate = worker.generate

    def failing_generate(model, template, rows, params, on_delta=None, **kwargs):
        calls = []

        def exploding_delta(row, text):
            calls.append(row)
            if len(calls) == 3:
                raise RuntimeError("device lost")
            on_delta(row, text)

        return real_generate(model, template, rows, params, on_delta=exploding_delta, **kwargs)

    monkeypatch.setattr(worker, "generate", failing_generate)
    # worker.generate is the static engine's; tests/test_engine_step.py injects the same fault into the step engine.
    with running_server(model=str(qwen2_vl_dir), max_new_tokens=20, engine="static") as server:
        body = {**user("hello"), "max_tokens": 20, "stream": True, "temperature": 0}
        with httpx.stream("POST", server.base_url + "/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = [line for line in response.iter_lines() if line]
        assert "[DONE]" not in lines[-1]
        error = json.loads(lines[-1][len("data: "):])["error"]
        assert set(error) == ERROR_KEYS and "device lost" in error["message"] and error["type"] == "server_error"
        chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
        assert any(c["choices"][0]["delta"].get("content") for c in chunks)  # text was streamed before the failure
        # Not streaming, the same failure is a 500 in the error shape; the server stays up for the next request.
        failed = httpx.post(server.base_url + "/chat/completions", json={**body, "stream": False})
        assert check_error_shape(failed, 500)["code"] == "generation_failed"
        monkeypatch.setattr(worker, "generate", real_generate)
        assert httpx.post(server.base_url + "/chat/completions", json=user("hi")).status_code == 200
