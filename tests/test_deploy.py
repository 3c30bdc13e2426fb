"""`mm deploy` end to end with the official openai SDK and raw HTTP: every request form of the seeds, on a real
server (build_app + uvicorn on 127.0.0.1) over the tiny checkpoints, with LoRA adapters made by peft."""

from __future__ import annotations

import base64
import json

import httpx
import openai
import pytest

from family_checks import assert_same_openai_logprobs
from test_deploy_support import make_base_only, make_lora, running_server, static_http_server, wav_bytes

MODEL = "qwen2-vl"  # the served name of a plain checkpoint directory: its family's name


@pytest.fixture(scope="module")
def image_dir(shape_images):
    return shape_images["red"].parent


@pytest.fixture(scope="module")
def image_host(image_dir):
    with static_http_server(image_dir) as url:
        yield url


@pytest.fixture(scope="module")
def server(qwen2_vl_dir, image_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    lora_a = make_lora(qwen2_vl_dir, root / "a", seed=1)
    lora_b = make_lora(qwen2_vl_dir, root / "b", seed=2)
    # The image host of these tests is on loopback: allowed by name, as --allowed_media_domains does.
    with running_server(model=str(qwen2_vl_dir), lora_modules=[f"lora-a={lora_a}", f"lora-b={lora_b}"],
                        allowed_local_media_path=str(image_dir), max_batch_size=8,
                        allowed_media_domains=["127.0.0.1"]) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key="EMPTY", base_url=server.base_url, max_retries=0)


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def first_logprobs(client, content, model=MODEL, **extra):
    """Greedy first-token logprobs: equal for equal inputs, different when the image differs."""
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                              max_tokens=2, temperature=0, logprobs=True, top_logprobs=5, **extra)
    step = response.choices[0].logprobs.content[0]
    return response.usage.prompt_tokens, [(t.token, round(t.logprob, 4)) for t in step.top_logprobs]


def test_models_list_names_the_model_and_each_adapter(client, server):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL, "lora-a", "lora-b"]
    for card in models:
        extra = card.model_extra
        assert card.object == "model" and isinstance(card.created, int) and card.owned_by == "swiftlite"
        assert extra["is_multimodal"] is True and extra["is_chat"] is True
    assert client.models.retrieve("lora-a").model_extra["parent"] == MODEL
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_chat_with_an_image_url_streams_the_same_text_as_it_answers(client, image_host):
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"{image_host}/red.png"}},
        {"type": "text", "text": "what shape is it"},
    ]}]
    response = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == MODEL and response.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    text_only = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "what shape is it"}],
                                               max_tokens=1, temperature=0)
    assert response.usage.prompt_tokens > text_only.usage.prompt_tokens + 3  # the image's tokens are counted
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens

    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                                 stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert {c.id for c in chunks} == {chunks[0].id} and {c.model for c in chunks} == {MODEL}
    assert all(c.object == "chat.completion.chunk" and c.created for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks][-1] == choice.finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == choice.message.content

    # Stream and non-stream agree step by step in logprobs, not only in text.
    logged = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                            logprobs=True, top_logprobs=3)
    streamed = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                                   logprobs=True, top_logprobs=3, stream=True))
    steps = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert_same_openai_logprobs(steps, logged.choices[0].logprobs.content, what="stream vs non-stream")


def test_every_image_form_reaches_the_model_identically(client, image_host, shape_images):
    red, blue = shape_images["red"], shape_images["blue"]
    forms = {
        "http url part": [{"type": "image_url", "image_url": {"url": f"{image_host}/red.png"}},
                          {"type": "text", "text": "what colour is it"}],
        "data url part": [{"type": "image_url", "image_url": {"url": data_url(red)}},
                          {"type": "text", "text": "what colour is it"}],
        "bare url string part": [{"type": "image_url", "image_url": f"{image_host}/red.png"},
                                 {"type": "text", "text": "what colour is it"}],
        "img tag with url": f"<img>{image_host}/red.png</img>what colour is it",
        "img tag with base64": f"<img>{base64.b64encode(red.read_bytes()).decode()}</img>what colour is it",
        "img tag with allowed path": f"<img>{red}</img>what colour is it",
        "file url part": [{"type": "image_url", "image_url": {"url": red.as_uri()}},
                          {"type": "text", "text": "what colour is it"}],
    }
    results = {name: first_logprobs(client, content) for name, content in forms.items()}
    results["images in extra_body"] = first_logprobs(client, "what colour is it", extra_body={"images": [data_url(red)]})
    reference = results["data url part"]
    for name, result in results.items():
        assert result == reference, name
    assert first_logprobs(client, [{"type": "image_url", "image_url": {"url": data_url(blue)}},
                                   {"type": "text", "text": "what colour is it"}]) != reference


def test_multi_turn_with_system_and_history(client, shape_images):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(shape_images["green"])}},
                                     {"type": "text", "text": "what is in this image"}]},
        {"role": "assistant", "content": "a green circle"},
        {"role": "user", "content": "what colour is it"},
    ]
    two_turns = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3, temperature=0)
    one_turn = client.chat.completions.create(model=MODEL, messages=messages[:2], max_tokens=3, temperature=0)
    assert two_turns.choices[0].finish_reason in ("stop", "length")
    assert two_turns.usage.prompt_tokens > one_turn.usage.prompt_tokens + 5


def test_lora_adapters_are_chosen_by_model_name(client):
    def answer(model):
        response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello world"}],
                                                  max_tokens=6, temperature=0, logprobs=True)
        assert response.model == model
        return [step.token for step in response.choices[0].logprobs.content]

    base, lora_a, lora_b = answer(MODEL), answer("lora-a"), answer("lora-b")
    assert len({tuple(base), tuple(lora_a), tuple(lora_b)}) == 3
    assert answer("lora-a") == lora_a  # deterministic: the same adapter gives the same greedy answer


def test_n_choices_seed_stop_and_usage_chunk(client):
    kwargs = dict(model="lora-a", messages=[{"role": "user", "content": "describe the picture"}], max_tokens=5)
    # The tiny checkpoint's generation_config says top_k 1: lift it, or every sample would be the greedy one.
    sample = dict(n=3, temperature=1.5, top_p=1.0, seed=7, extra_body={"top_k": -1})
    sampled = client.chat.completions.create(**sample, **kwargs)
    again = client.chat.completions.create(**sample, **kwargs)
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert [c.message.content for c in sampled.choices] == [c.message.content for c in again.choices]
    assert len({c.message.content for c in sampled.choices}) > 1  # one seed, yet n different choices
    assert sampled.usage.completion_tokens <= 15

    greedy = client.chat.completions.create(temperature=0, **kwargs).choices[0].message.content
    cut = greedy[1:3]
    stopped = client.chat.completions.create(temperature=0, stop=[cut], **kwargs).choices[0]
    assert stopped.finish_reason == "stop" and stopped.message.content == greedy[: greedy.find(cut)]

    chunks = list(client.chat.completions.create(temperature=0, stream=True, stream_options={"include_usage": True},
                                                 **kwargs))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_sse_stream_shape(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3, "temperature": 0,
            "stream": True, "n": 2}
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert mine[-1]["finish_reason"] == "length" and all(c["finish_reason"] is None for c in mine[:-1])
    assert all(set(c) >= {"id", "object", "created", "model", "choices"} for c in chunks)


def test_completions_with_logprobs_on_a_chat_model(client, shape_images):
    response = client.completions.create(model=MODEL, prompt=f"<img>{data_url(shape_images['red'])}</img>This is a",
                                         max_tokens=4, temperature=0, logprobs=2)
    choice = response.choices[0]
    assert response.object == "text_completion" and isinstance(choice.text, str)
    assert len(choice.logprobs.tokens) == response.usage.completion_tokens
    assert response.usage.completion_tokens == 4 or choice.finish_reason == "stop"
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    assert "".join(choice.logprobs.tokens) == choice.text


@pytest.mark.parametrize("seed_body", ["qwen-vl-chat", "yi-vl", "minicpm-v", "grps multi-turn", "rtp-llm parts"])
def test_the_seeds_curl_bodies(server, image_host, seed_body):
    """The request bodies of the ms-swift/rtp-llm/grps docs, with our model name and a local image host
    (max_tokens 256 lowered to 24: a random tiny model never stops early, and this machine is small)."""
    rose, cat = f"{image_host}/red.png", f"{image_host}/blue.png"
    bodies = {
        "qwen-vl-chat": {"model": MODEL, "messages": [{"role": "user", "content": f"Picture 1:<img>{rose}</img>\n"
                         "What kind of flower is in the picture and how many are there?"}],
                         "max_tokens": 24, "temperature": 0},
        "yi-vl": {"model": MODEL, "messages": [{"role": "user", "content": "Describe this image."}], "seed": 42,
                  "images": [cat], "max_tokens": 16},
        "minicpm-v": {"model": MODEL, "messages": [{"role": "user", "content": "Describe this image."}],
                      "temperature": 0, "images": [cat], "max_tokens": 16},
        "grps multi-turn": {"model": MODEL, "max_tokens": 24, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": rose}},
                                         {"type": "text", "text": "这是什么"}]},
            {"role": "assistant", "content": "图中是一名女子在沙滩上和狗玩耍"},
            {"role": "user", "content": "输出女生的检测框。"}]},
        "rtp-llm parts": {"temperature": 0.0, "top_p": 0.1, "max_tokens": 16, "messages": [
            {"role": "user", "name": None, "content": [{"image_url": {"url": rose}, "type": "image_url"},
                                                       {"text": "描述一下这张图片", "type": "text"}]}]},
    }
    response = httpx.post(server.base_url + "/chat/completions", json=bodies[seed_body], timeout=120)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["object"] == "chat.completion" and payload["model"] == MODEL
    assert payload["choices"][0]["message"]["role"] == "assistant"
    assert set(payload["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


def test_grps_relative_file_url_resolves_inside_the_allowed_directory(server, shape_images):
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file://./red.png"}},
        {"type": "image_url", "image_url": {"url": "file://./blue.png"}},
        {"type": "text", "text": "描述一下两张图片的不同。"}]}]}
    response = httpx.post(server.base_url + "/chat/completions", json=body)
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def base_server(qwen2_vl_dir, tmp_path_factory):
    base_dir = make_base_only(qwen2_vl_dir, tmp_path_factory.mktemp("base") / "qwen2-vl-base")
    with running_server(model=str(base_dir), served_model_name="qwen2-vl-base",
                        allowed_media_domains=["127.0.0.1"]) as running:
        yield running


def test_base_model_takes_completions_and_refuses_chat(base_server, image_host):
    client = openai.OpenAI(api_key="EMPTY", base_url=base_server.base_url, max_retries=0)
    card = client.models.list().data[0]
    assert card.id == "qwen2-vl-base" and card.model_extra["is_chat"] is False
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=card.id, messages=[{"role": "user", "content": "hi"}])
    assert "/v1/completions" in refused.value.body["message"]

    query = f"Picture 1:<img>{image_host}/red.png</img>\nThis is a"  # seed 000's qwen-vl example
    response = client.completions.create(model=card.id, prompt=query, max_tokens=4, temperature=0, seed=42)
    assert response.choices[0].finish_reason in ("stop", "length") and response.usage.prompt_tokens > 8
    streamed = list(client.completions.create(model=card.id, prompt=query, max_tokens=4, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == response.choices[0].text
    with_images = client.completions.create(model=card.id, prompt="This is a", max_tokens=4, temperature=0,
                                            extra_body={"images": [f"{image_host}/red.png"]})
    text_only = client.completions.create(model=card.id, prompt="This is a", max_tokens=4, temperature=0)
    assert with_images.usage.prompt_tokens > text_only.usage.prompt_tokens + 3


@pytest.fixture(scope="module")
def llava_server(llava_dir):
    with running_server(model=str(llava_dir)) as running:
        yield running


def test_llava_chat_and_stream(llava_server, shape_images):
    client = openai.OpenAI(api_key="EMPTY", base_url=llava_server.base_url, max_retries=0)
    assert client.models.list().data[0].id == "llava1_5"
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(shape_images["red"])}},
                                             {"type": "text", "text": "what is in this image"}]}]
    response = client.chat.completions.create(model="llava1_5", messages=messages, max_tokens=6, temperature=0)
    assert response.usage.prompt_tokens > 9  # 56 px image, 14 px patches: 16 image tokens
    chunks = list(client.chat.completions.create(model="llava1_5", messages=messages, max_tokens=6, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == response.choices[0].message.content


@pytest.fixture(scope="module")
def audio_server(tmp_path_factory):
    from swiftlite.testing import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("audio")
    (root / "sound.wav").write_bytes(wav_bytes())
    model_dir = build_tiny_checkpoint("qwen2-audio", root / "qwen2-audio")
    with running_server(model=str(model_dir), limit_mm_per_prompt="audio=2",
                        allowed_media_domains=["127.0.0.1"]) as running, \
            static_http_server(root) as host:
        running.media_host = host
        yield running


@pytest.mark.slow  # builds one more tiny checkpoint
def test_audio_chat_as_xinference_and_openai_send_it(audio_server):
    client = openai.OpenAI(api_key="EMPTY", base_url=audio_server.base_url, max_retries=0)
    model = client.models.list().data[0].id
    sound_url = f"{audio_server.media_host}/sound.wav"
    text_only = client.chat.completions.create(model=model, max_tokens=2,
                                               messages=[{"role": "user", "content": "What's that sound?"}])
    # OpenAI's input_audio part (base64 wav)
    encoded = base64.b64encode(wav_bytes()).decode()
    with_audio = client.chat.completions.create(model=model, max_tokens=2, messages=[{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": encoded, "format": "wav"}},
        {"type": "text", "text": "What's that sound?"}]}])
    assert with_audio.usage.prompt_tokens > text_only.usage.prompt_tokens + 10
    # Seed 002 (Xinference): {"type": "audio", "audio_url": ...} parts across a multi-turn conversation
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "audio", "audio_url": sound_url},
                                     {"type": "text", "text": "What's that sound?"}]},
        {"role": "assistant", "content": "It is the sound of glass shattering."},
        {"role": "user", "content": [{"type": "text", "text": "What can you do when you hear that?"}]},
        {"role": "assistant", "content": "Stay alert and cautious."},
        {"role": "user", "content": [{"type": "audio", "audio_url": sound_url},
                                     {"type": "text", "text": "What does the person say?"}]},
    ]
    response = httpx.post(audio_server.base_url + "/chat/completions",
                          json={"model": model, "messages": messages, "max_tokens": 2}, timeout=60)
    assert response.status_code == 200, response.text
    audio_tokens = with_audio.usage.prompt_tokens - text_only.usage.prompt_tokens
    assert response.json()["usage"]["prompt_tokens"] > 2 * audio_tokens  # both clips are in the prompt
    # ms-swift's `audios` list, and the media limit
    listed = client.chat.completions.create(model=model, max_tokens=2, extra_body={"audios": [sound_url]},
                                            messages=[{"role": "user", "content": "What's that sound?"}])
    assert listed.usage.prompt_tokens == with_audio.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError, match="audio=2"):
        client.chat.completions.create(model=model, max_tokens=2, extra_body={"audios": [sound_url] * 3},
                                       messages=[{"role": "user", "content": "What's that sound?"}])
