"""Python client for `mm deploy` (or any OpenAI-compatible server), with ms-swift's helper names.

    from swiftlite.client import get_model_list_client, inference_client, XRequestConfig

    model_type = get_model_list_client().data[0].id
    resp = inference_client(model_type, 'Picture 1:<img>rose.jpg</img>\\nWhat flower is this?',
                            request_config=XRequestConfig(seed=42))
    print(resp.choices[0].message.content)
    for chunk in inference_client(model_type, 'Describe it.', history=[(query, answer)],
                                  request_config=XRequestConfig(stream=True)):
        print(chunk.choices[0].delta.content, end='')

Responses are OpenAI-shaped objects with attribute access (`resp.choices[0].message.content`, stream chunks
`chunk.choices[0].delta.content`; completions `resp.choices[0].text`). Local files named in `<img>`/`<audio>`
tags or in `images`/`audios` are sent inline as base64, so the server needs no access to the client's disk.
Whether to call chat or completions is read from the server's /v1/models (`is_chat`) unless
`is_chat_request` says. Only httpx is needed.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
from dataclasses import asdict, dataclass

import httpx

DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)


@dataclass
class XRequestConfig:
    """Sampling settings of one request (ms-swift's names); None leaves the server's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    n: int | None = None
    seed: int | None = None
    stop: list[str] | str | None = None
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with token counts
    logprobs: bool = False
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class ClientError(Exception):
    """The server answered with an error: `status_code` and the OpenAI error object's fields."""

    def __init__(self, status_code: int, message: str, error: dict | None = None):
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.error = error or {}


class OpenAIObject(dict):
    """A JSON object with attribute access, like the openai SDK's models; missing optional fields read None."""

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return self.get(name)

    @classmethod
    def wrap(cls, value):
        if isinstance(value, dict):
            return cls({key: cls.wrap(item) for key, item in value.items()})
        if isinstance(value, list):
            return [cls.wrap(item) for item in value]
        return value

    def model_dump(self) -> dict:
        return json.loads(json.dumps(self))


# ---- local media -> base64 --------------------------------------------------------------------------------
_TAG_RE = re.compile(r"<(img|audio)>([^<>]*)</\1>")


def _is_local_file(source) -> bool:
    if not isinstance(source, (str, os.PathLike)):
        return False
    text = os.fspath(source)
    if "://" in text or text.startswith("data:") or len(text) > 4096:
        return False
    return os.path.isfile(os.path.expanduser(text))


def _data_url(path) -> str:
    import base64

    path = os.path.expanduser(os.fspath(path))
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    with open(path, "rb") as f:
        return f"data:{mime};base64," + base64.b64encode(f.read()).decode("ascii")


def _inline(source):
    return _data_url(source) if _is_local_file(source) else source


def _inline_tags(text: str | None, inline=_inline) -> str | None:
    """`<img>`/`<audio>` tags whose source is a local file get the file's bytes instead (`inline` says how)."""
    if not text:
        return text
    return _TAG_RE.sub(lambda m: f"<{m.group(1)}>{inline(m.group(2).strip())}</{m.group(1)}>", text)


def convert_to_base64(*, messages: list[dict] | None = None, prompt: str | None = None,
                      images: list | None = None) -> dict:
    """ms-swift's helper: local files in messages, a prompt's <img> tags or an images list become base64."""
    def encode(source):
        return _data_url(source).split(",", 1)[1] if _is_local_file(source) else source

    result = {}
    if messages is not None:
        result["messages"] = [{**m, "content": _inline_tags(m["content"], encode)}
                              if isinstance(m.get("content"), str) else m for m in messages]
    if prompt is not None:
        result["prompt"] = _inline_tags(prompt, encode)
    if images is not None:
        result["images"] = [encode(image) for image in images]
    return result


# ---- requests ------------------------------------------------------------------------------------------------
def _base_url(host: str, port, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    return f"http://{host}:{port}/v1"


def _headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json().get("error") or {}
        message = error.get("message") or response.text
    except (ValueError, AttributeError):
        error, message = {}, response.text
    raise ClientError(response.status_code, message, error)


def _is_chat_model(models: OpenAIObject, model_type: str) -> bool:
    for card in models.data or []:
        if card.id == model_type:
            return card.is_chat is not False
    return True


def _parse_event(line: str):
    """One SSE line -> a chunk object, "done", or None (comments, blank lines).

    The server sends one `data:` line per event, so a line is an event; httpx-sse would do this job but is not
    among our dependencies, and a dozen lines do not justify one.
    """
    if not line.startswith("data:"):
        return None
    data = line[len("data:"):].strip()
    if data == "[DONE]":
        return "done"
    payload = json.loads(data)
    if isinstance(payload, dict) and "error" in payload:
        error = payload["error"] or {}
        raise ClientError(500 if error.get("type") == "server_error" else 400, error.get("message", data), error)
    return OpenAIObject.wrap(payload)


# ---- one implementation of each call ------------------------------------------------------------------------
# Each call is built here once (a _Call) and its answer read once (_read, _parse_event); the public functions
# below only send it: the plain ones with httpx.Client, their _async twins with httpx.AsyncClient.
@dataclass(frozen=True)
class _Call:
    method: str
    url: str
    body: dict | None = None
    stream: bool = False


def _models_call(host: str, port, url: str | None) -> _Call:
    return _Call("GET", _base_url(host, port, url) + "/models")


def _inference_call(model_type: str, query: str, history, system, images, audios, config: XRequestConfig,
                    is_chat: bool, base: str) -> _Call:
    body: dict = {"model": model_type}
    for name, value in asdict(config).items():
        if name in ("include_usage", "logprobs") or value is None:
            continue
        body[name] = value
    if config.stream and config.include_usage:
        body["stream_options"] = {"include_usage": True}
    if is_chat:
        messages = [{"role": "system", "content": system}] if system else []
        for past_query, past_response in history or []:
            messages += [{"role": "user", "content": _inline_tags(past_query)},
                         {"role": "assistant", "content": past_response}]
        messages.append({"role": "user", "content": _inline_tags(query)})
        body["messages"] = messages
        if config.logprobs:
            body["logprobs"] = True
        path = "/chat/completions"
    else:
        if history or system:
            raise ValueError("a completions request (a base model) takes no history or system: put it in the query")
        body["prompt"] = _inline_tags(query)
        body.pop("top_logprobs", None)
        if config.logprobs:
            body["logprobs"] = config.top_logprobs or 0
        path = "/completions"
    if images:
        body["images"] = [_inline(image) for image in images]
    if audios:
        body["audios"] = [_inline(audio) for audio in audios]
    return _Call("POST", base + path, body, stream=config.stream)


def _read(response: httpx.Response) -> OpenAIObject:
    _raise_for_error(response)
    return OpenAIObject.wrap(response.json())


# ---- synchronous ------------------------------------------------------------------------------------------
def _send(client: httpx.Client, call: _Call):
    """The call's answer: a response object, or, streamed, an iterator of chunks that closes `client` at the end."""
    if not call.stream:
        with client:
            return _read(client.request(call.method, call.url, json=call.body))
    # Open the stream now, so an error status raises here rather than at the first iteration.
    response = client.send(client.build_request(call.method, call.url, json=call.body), stream=True)
    if response.status_code >= 400:
        response.read()
        client.close()
        _raise_for_error(response)
    return _iterate(client, response)


def _iterate(client: httpx.Client, response: httpx.Response):
    try:
        for line in response.iter_lines():
            event = _parse_event(line)
            if event == "done":
                return
            if event is not None:
                yield event
    finally:
        response.close()
        client.close()


def get_model_list_client(host: str = "127.0.0.1", port: int | str = 8000, api_key: str | None = "EMPTY", *,
                          url: str | None = None, timeout=DEFAULT_TIMEOUT) -> OpenAIObject:
    """GET /v1/models: `.data[i].id`, `.data[i].is_chat`, `.data[i].is_multimodal`."""
    return _send(httpx.Client(timeout=timeout, headers=_headers(api_key)), _models_call(host, port, url))


def inference_client(model_type: str, query: str, history: list | None = None, system: str | None = None,
                     images: list | None = None, audios: list | None = None, *,
                     request_config: XRequestConfig | None = None, host: str = "127.0.0.1", port: int | str = 8000,
                     api_key: str | None = "EMPTY", is_chat_request: bool | None = None, url: str | None = None,
                     timeout=DEFAULT_TIMEOUT):
    """One chat (or completion) request; a response object, or an iterator of chunks when streaming."""
    config = request_config or XRequestConfig()
    base = _base_url(host, port, url)
    if is_chat_request is None:
        models = get_model_list_client(api_key=api_key, url=base, timeout=timeout)
        is_chat_request = _is_chat_model(models, model_type)
    call = _inference_call(model_type, query, history, system, images, audios, config, is_chat_request, base)
    return _send(httpx.Client(timeout=timeout, headers=_headers(api_key)), call)


# ---- asynchronous: the same calls, awaited -----------------------------------------------------------------
async def _send_async(client: httpx.AsyncClient, call: _Call):
    if not call.stream:
        async with client:
            response = await client.request(call.method, call.url, json=call.body)
        return _read(response)
    response = await client.send(client.build_request(call.method, call.url, json=call.body), stream=True)
    if response.status_code >= 400:
        await response.aread()
        await client.aclose()
        _raise_for_error(response)
    return _iterate_async(client, response)


async def _iterate_async(client: httpx.AsyncClient, response: httpx.Response):
    try:
        async for line in response.aiter_lines():
            event = _parse_event(line)
            if event == "done":
                return
            if event is not None:
                yield event
    finally:
        await response.aclose()
        await client.aclose()


async def get_model_list_client_async(host: str = "127.0.0.1", port: int | str = 8000,
                                      api_key: str | None = "EMPTY", *, url: str | None = None,
                                      timeout=DEFAULT_TIMEOUT) -> OpenAIObject:
    return await _send_async(httpx.AsyncClient(timeout=timeout, headers=_headers(api_key)),
                             _models_call(host, port, url))


async def inference_client_async(model_type: str, query: str, history: list | None = None, system: str | None = None,
                                 images: list | None = None, audios: list | None = None, *,
                                 request_config: XRequestConfig | None = None, host: str = "127.0.0.1",
                                 port: int | str = 8000, api_key: str | None = "EMPTY",
                                 is_chat_request: bool | None = None, url: str | None = None,
                                 timeout=DEFAULT_TIMEOUT):
    """`await` it for a response object, or, when streaming, for an async iterator of chunks."""
    config = request_config or XRequestConfig()
    base = _base_url(host, port, url)
    if is_chat_request is None:
        models = await get_model_list_client_async(api_key=api_key, url=base, timeout=timeout)
        is_chat_request = _is_chat_model(models, model_type)
    call = _inference_call(model_type, query, history, system, images, audios, config, is_chat_request, base)
    return await _send_async(httpx.AsyncClient(timeout=timeout, headers=_headers(api_key)), call)
