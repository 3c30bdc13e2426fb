"""`swiftlite.client` against a live `mm deploy` server: ms-swift's client calls from the seeds, sync and async,
local images sent as base64 (the server refuses local paths), completions for base models, errors."""

from __future__ import annotations

import asyncio
import base64

import pytest

from swiftlite.client import (
    ClientError,
    XRequestConfig,
    convert_to_base64,
    get_model_list_client,
    get_model_list_client_async,
    inference_client,
    inference_client_async,
)
from test_deploy_support import make_base_only, running_server, static_http_server


@pytest.fixture(scope="module")
def server(qwen2_vl_dir):
    # No --allowed_local_media_path: local files only work because the client inlines them.
    # The image host is on loopback: allowed by name, as --allowed_media_domains does.
    with running_server(model=str(qwen2_vl_dir), max_new_tokens=6, allowed_media_domains=["127.0.0.1"]) as running:
        yield running


@pytest.fixture(scope="module")
def base_server(qwen2_vl_dir, tmp_path_factory):
    base_dir = make_base_only(qwen2_vl_dir, tmp_path_factory.mktemp("client-base") / "qwen2-vl")
    with running_server(model=str(base_dir), served_model_name="qwen2-vl-base", max_new_tokens=6,
                        allowed_media_domains=["127.0.0.1"]) as running:
        yield running


@pytest.fixture(scope="module")
def image_host(shape_images):
    with static_http_server(shape_images["red"].parent) as url:
        yield url


def where(server) -> dict:
    return {"host": server.host, "port": server.port}


def test_seed_000_chat_session_with_a_local_image_then_a_streamed_follow_up(server, shape_images):
    model_list = get_model_list_client(**where(server))
    model_type = model_list.data[0].id
    assert model_type == "qwen2-vl" and model_list.data[0].is_multimodal is True

    query = f"Picture 1:<img>{shape_images['red']}</img>\nWhat kind of flower is in the picture?"
    resp = inference_client(model_type, query, request_config=XRequestConfig(seed=42), **where(server))
    response = resp.choices[0].message.content
    assert isinstance(response, str) and resp.usage.prompt_tokens > 20 and resp.choices[0].finish_reason

    history = [(query, response)]
    stream = inference_client(model_type, "Box out the flowers in the picture.", history,
                              request_config=XRequestConfig(stream=True, seed=42), **where(server))
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    streamed = "".join(chunk.choices[0].delta.content for chunk in chunks)  # never None, as in the seed's print
    assert isinstance(streamed, str)


def test_images_list_mixes_local_files_and_urls(server, shape_images, image_host):
    images = [str(shape_images["blue"])]
    config = XRequestConfig(temperature=0, max_tokens=2)
    one = inference_client("qwen2-vl", "Describe this image.", images=images, request_config=config, **where(server))
    images.append(f"{image_host}/green.png")
    history = [("Describe this image.", one.choices[0].message.content)]
    two = inference_client("qwen2-vl", "How many sheep are in the picture?", history, images=images,
                           request_config=config, **where(server))
    assert two.usage.prompt_tokens > one.usage.prompt_tokens + 4  # the second image is in the prompt too


def test_local_image_gives_the_same_answer_as_its_url(server, shape_images, image_host):
    config = XRequestConfig(temperature=0, max_tokens=3, logprobs=True, top_logprobs=3)
    by_path = inference_client("qwen2-vl", f"<img>{shape_images['red']}</img>colour?", request_config=config,
                               **where(server))
    by_url = inference_client("qwen2-vl", f"<img>{image_host}/red.png</img>colour?", request_config=config,
                              **where(server))
    assert by_path.choices[0].logprobs == by_url.choices[0].logprobs
    assert by_path.usage == by_url.usage


def test_system_n_stop_and_sampling_fields_reach_the_server(server):
    config = XRequestConfig(n=2, temperature=0, max_tokens=4, stop=["zzz"], top_k=-1, top_p=0.9,
                            repetition_penalty=1.05, include_usage=True, stream=True)
    chunks = list(inference_client("qwen2-vl", "hello", system="You are a helpful assistant.",
                                   request_config=config, **where(server)))
    assert {chunk.choices[0].index for chunk in chunks if chunk.choices} == {0, 1}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_base_model_is_called_through_completions(base_server, image_host):
    model_type = get_model_list_client(**where(base_server)).data[0].id
    query = f"Picture 1:<img>{image_host}/red.png</img>\nThis is a"
    resp = inference_client(model_type, query, request_config=XRequestConfig(seed=42, max_tokens=4),
                            **where(base_server))
    assert resp.object == "text_completion" and isinstance(resp.choices[0].text, str)
    chunks = list(inference_client(model_type, query, request_config=XRequestConfig(stream=True, max_tokens=4,
                                                                                     temperature=0),
                                   **where(base_server)))
    assert all(chunk.object == "text_completion" for chunk in chunks)
    with pytest.raises(ValueError, match="no history"):
        inference_client(model_type, query, [("a", "b")], **where(base_server))


def test_async_client(server, shape_images):
    async def session():
        models = await get_model_list_client_async(**where(server))
        resp = await inference_client_async(models.data[0].id, f"<img>{shape_images['green']}</img>what shape",
                                            request_config=XRequestConfig(temperature=0), **where(server))
        stream = await inference_client_async(models.data[0].id, f"<img>{shape_images['green']}</img>what shape",
                                              request_config=XRequestConfig(temperature=0, stream=True),
                                              **where(server))
        text = "".join([chunk.choices[0].delta.content async for chunk in stream])
        return resp.choices[0].message.content, text

    answer, streamed = asyncio.run(session())
    assert answer == streamed


def test_errors_raise_client_error_with_the_servers_message(server):
    with pytest.raises(ClientError) as unknown:
        inference_client("gpt-4o", "hi", is_chat_request=True, **where(server))
    assert unknown.value.status_code == 404 and "not served here" in unknown.value.message
    with pytest.raises(ClientError) as bad:
        inference_client("qwen2-vl", "hi", request_config=XRequestConfig(stream=True, presence_penalty=3.0),
                         **where(server))
    assert bad.value.status_code == 400 and bad.value.error["param"] == "presence_penalty"

    async def failing():
        await inference_client_async("qwen2-vl", "hi", request_config=XRequestConfig(temperature=-1),
                                     **where(server))

    with pytest.raises(ClientError, match="temperature"):
        asyncio.run(failing())


def test_convert_to_base64(shape_images):
    red = shape_images["red"]
    encoded = base64.b64encode(red.read_bytes()).decode()
    converted = convert_to_base64(prompt=f"Picture 1:<img>{red}</img>\nhi", images=[str(red), "http://x/y.png"],
                                  messages=[{"role": "user", "content": f"<img>{red}</img>what"}])
    assert converted["prompt"] == f"Picture 1:<img>{encoded}</img>\nhi"
    assert converted["images"] == [encoded, "http://x/y.png"]
    assert converted["messages"][0]["content"] == f"<img>{encoded}</img>what"
