"""One client must not hurt the others: poisoned sampling values are 400s at the door and, should one reach the
engine, end their own row only; malformed input is a 400 naming the field (never a 500); decompression bombs are
refused from their header; slow fetches, slow request heads and slow bodies are cut by their deadlines, and
do not hold the threads text-only requests need; half-closed clients are answered; /metrics stays bounded.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import http.server
import httpx
import pytest

from swiftlite.media import MediaPolicy, load_image
from test_deploy_support import http_server, running_server

MODEL = "qwen2-vl"


class _Slow(http.server.BaseHTTPRequestHandler):
    """A media host that drips its body, one byte every 0.2 s (60 bytes: 12 s); it counts the fetches it saw
    and those it could drip to the end (a fetcher that honours its deadline hangs up long before)."""

    fetches = 0
    completed = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).fetches += 1
        try:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "60")
            self.end_headers()
            for _ in range(60):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
            type(self).completed += 1
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server gave up on us: that is the point


@pytest.fixture(scope="module")
def drip_url():
    with http_server(_Slow) as url:
        yield url + "/drip.png"


class _SlowHead(http.server.BaseHTTPRequestHandler):
    """A media host whose answers drip where httpx's per-read timeouts cannot see it: /head sends its status line
    and headers a byte every 0.2 s (60 s in all), /gaps its body a byte every 0.9 s (a fetch timeout of 1 s is
    never reached by one read); /red.png is an ordinary image."""

    png = b""

    def log_message(self, *args):
        pass

    def do_GET(self):
        try:
            if self.path.startswith("/red.png"):
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n"
                                 % len(self.png) + self.png)
                return
            if self.path.startswith("/head"):
                head, body, gap = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 300, b"", 0.2
            else:
                head, body, gap = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n", b"x" * 50, 0.9
            if body:
                self.wfile.write(head)
            for byte in body or head:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(gap)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the fetcher hung up: that is the point


@pytest.fixture(scope="module")
def slow_host(shape_images):
    _SlowHead.png = shape_images["red"].read_bytes()
    with http_server(_SlowHead) as url:
        yield url


@pytest.fixture(scope="module")
def server(qwen2_vl_dir):
    with running_server(model=str(qwen2_vl_dir), max_new_tokens=4, max_batch_size=8, request_timeout=2,
                        media_fetch_timeout=4, allowed_media_domains=["127.0.0.1"]) as running:
        yield running


def chat(content="hi", **fields) -> dict:
    return {"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": content}], **fields}


def post(server, body, path="/chat/completions", raw: bytes | None = None) -> httpx.Response:
    if raw is not None:
        return httpx.post(server.base_url + path, content=raw, headers={"Content-Type": "application/json"},
                          timeout=120)
    return httpx.post(server.base_url + path, json=body, timeout=120)


def png_bytes(width: int, height: int) -> bytes:
    """A valid grey PNG of any size, compressed row by row (a 12000x12000 one is ~140 KB, built in ~1 s)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor, row, parts = zlib.compressobj(9), b"\0" + b"\x80" * width, []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def data_url(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


# ---- sampling values at the door ----------------------------------------------------------------------------
DOOR_CASES = [
    ("seed 2**64", {"seed": 2**64}, "seed"),
    ("seed below int64", {"seed": -(2**63) - 1}, "seed"),
    ("repetition_penalty 1e-300", {"repetition_penalty": 1e-300}, "repetition_penalty"),
    ("repetition_penalty 0", {"repetition_penalty": 0}, "repetition_penalty"),
    ("repetition_penalty 1e300", {"repetition_penalty": 1e300}, "repetition_penalty"),
    ("temperature over 2", {"temperature": 2.5}, "temperature"),
    ("top_p over 1", {"top_p": 1.5}, "top_p"),
    ("five stop words", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("a long stop word", {"stop": ["x" * 300]}, "stop"),
    ("100,000 stop words", {"stop": ["word"] * 100_000}, "stop"),
]


@pytest.mark.parametrize("case,fields,param", DOOR_CASES, ids=[c[0] for c in DOOR_CASES])
def test_out_of_range_sampling_values_are_400s(server, case, fields, param):
    response = post(server, chat(**fields))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_a_logit_bias_over_the_whole_vocabulary_costs_a_step_what_a_small_one_does(one_thread):
    """logit_bias may name every token (150k ids pass the door: each is in the vocabulary). Rebuilt from the dict
    at each step it took 0.1-0.4 s of the engine thread per step, which every other row of the batch waited out;
    it is applied as one vector now. Medians of the same shaping with 2 and with 152,000 biased tokens."""
    import statistics

    import torch

    from swiftlite.engine.generate import SamplingParams
    from swiftlite.engine.logits import RowLogits

    width = 152_064

    def step_seconds(bias: dict) -> tuple[float, torch.Tensor]:
        shaper = RowLogits(SamplingParams(logit_bias=bias), None, width)
        logits = torch.zeros(width)
        shaped = shaper.shape(logits, [])  # the first step may build what later steps reuse
        times = []
        for _ in range(15):
            started = time.perf_counter()
            shaper.shape(logits, [])
            times.append(time.perf_counter() - started)
        return statistics.median(times), shaped

    whole = {token: (-1.0 if token % 2 else 2.0) for token in range(152_000)} | {width + 5: 100.0}  # + a padding id
    small_time, small = step_seconds({3: 5.0, 11: -100.0})
    whole_time, shaped = step_seconds(whole)
    assert small[3] == 5.0 and small[11] == -100.0 and small.count_nonzero() == 2
    assert shaped[0] == 2.0 and shaped[151_999] == -1.0 and shaped[152_000:].count_nonzero() == 0
    assert whole_time < 10 * small_time + 0.002, (whole_time, small_time)


def test_non_finite_numbers_are_400s(server):
    for literal in ("NaN", "Infinity", "-Infinity", "1e400"):
        raw = json.dumps(chat()).replace('"max_tokens": 3', f'"max_tokens": 3, "temperature": {literal}').encode()
        response = post(server, None, raw=raw)
        assert response.status_code == 400 and response.json()["error"]["param"] == "temperature", literal


def test_poisoned_requests_concurrent_with_good_ones(server):
    """Good requests sent together with poisoned ones all get their 200; the poisoned ones their 400."""
    poisons = [{"seed": 2**64}, {"repetition_penalty": 1e-300}, {"top_p": 1e-300, "temperature": 1.0},
               {"temperature": 1e-300}]
    bodies = [(chat(f"good {i}", temperature=0), True) for i in range(8)]
    bodies += [(chat("poison", **poison), poison.get("top_p") is not None or "temperature" in poison)
               for poison in poisons]
    with ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda item: post(server, item[0]), bodies))
    for (body, valid), response in zip(bodies, responses):
        assert response.status_code == (200 if valid else 400), (body, response.text)
        if valid:
            assert response.json()["choices"][0]["finish_reason"] in ("length", "stop")


@pytest.mark.parametrize("engine_kind", ["static", "step"])
def test_a_failing_row_ends_its_own_request_only(qwen2_vl_dir, engine_kind):
    """In the engine (`--engine static`, and the default `step`, whose rows decode in one forward): rows whose
    settings fail (a seed beyond 64 bits, a penalty that makes every logit inf) share one batch with good rows;
    the good rows finish, and only the poisoned requests fail."""
    from swiftlite.conversation import Conversation
    from swiftlite.engine.generate import SamplingParams
    from swiftlite.engine.step_loop import StepEngine
    from swiftlite.engine.worker import BatchingEngine, ChoiceFinished, EngineFailed, EngineRequest
    from swiftlite.models.checkpoint import load_for_inference

    loaded = load_for_inference(model_id_or_path=str(qwen2_vl_dir), dtype="fp32")
    conversation = Conversation()
    conversation.messages.append({"role": "user", "content": "hello there"})
    row = loaded.template.encode(conversation, add_generation_prompt=True)
    good = [SamplingParams(max_new_tokens=5, temperature=0.0) for _ in range(4)]
    poisoned = [SamplingParams(max_new_tokens=5, temperature=1.0, seed=2**64),
                SamplingParams(max_new_tokens=5, temperature=1.0, repetition_penalty=1e-300),
                SamplingParams(max_new_tokens=5, temperature=float("nan"))]
    engine = (StepEngine if engine_kind == "step" else BatchingEngine)(loaded.model, loaded.template,
                                                                      max_batch_size=8)

    async def run():
        streams = [engine.submit(EngineRequest([row], [params])) for params in good[:2] + poisoned + good[2:]]
        engine.start()  # after the submits: all seven requests go into one batch

        async def outcome(stream):
            async for event in stream:
                if isinstance(event, (ChoiceFinished, EngineFailed)):
                    return event

        return await asyncio.gather(*(outcome(stream) for stream in streams))

    try:
        events = asyncio.run(run())
    finally:
        engine.shutdown(5)
    kinds = [type(event).__name__ for event in events]
    assert kinds == ["ChoiceFinished"] * 2 + ["EngineFailed"] * 3 + ["ChoiceFinished"] * 2, kinds
    for event in events[:2] + events[5:]:
        assert len(event.result.token_ids) == 5 and event.result.finish_reason == "length"
    assert "seed" in events[2].message and "no valid probabilities" in events[3].message


def test_streams_never_carry_nan(server):
    body = chat("tell me", stream=True, logprobs=True, top_logprobs=3, temperature=1.0, top_p=1e-300, max_tokens=4)
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]

    def refuse(constant):
        raise AssertionError(f"{constant} in a stream chunk")

    assert lines[-1] == "[DONE]"
    for line in lines[:-1]:
        json.loads(line, parse_constant=refuse)


def test_a_model_whose_logits_hold_nan_never_puts_nan_in_json(server):
    """One NaN row in the output layer: that token's logit is NaN, so greedy picks it and every log-probability
    is NaN (log_softmax spreads it). Answers, stream chunks and echoed prompt logprobs must stay JSON:
    OpenAI's -9999.0 for each, never the bare word NaN (no parser reads it) and no 500 from a refusing encoder."""
    import torch

    def refuse(constant):
        raise AssertionError(f"{constant} in an answer")

    weight = server.app.state.server.engine.model.get_output_embeddings().weight
    saved = weight[7].clone()
    requests = [("/chat/completions", chat("hi", temperature=0, logprobs=True, top_logprobs=2)),
                ("/chat/completions", chat("hi", temperature=0, logprobs=True, top_logprobs=2, stream=True)),
                ("/completions", {"model": MODEL, "prompt": "hello there", "max_tokens": 1, "temperature": 0,
                                  "logprobs": 2, "echo": True})]
    try:
        with torch.no_grad():
            weight[7] = float("nan")
        for path, body in requests:
            response = post(server, body, path=path)
            assert response.status_code == 200, response.text
            payloads = [line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: ")]
            for payload in payloads[:-1] if payloads else [response.text]:
                assert "error" not in json.loads(payload, parse_constant=refuse), payload
            assert "-9999.0" in response.text, (path, response.text[:300])
    finally:
        with torch.no_grad():
            weight[7] = saved


# ---- malformed input: 400 naming the field ---------------------------------------------------------------------
def raw_chat(content_json: str, extra: str = "") -> bytes:
    return (f'{{"model": "{MODEL}", "max_tokens": 2{extra}, "messages": [{{"role": "user", "content": '
            f'{content_json}}}]}}').encode()


MALFORMED = [
    ("role a list", None, chat() | {"messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role"),
    ("role an object", None, chat() | {"messages": [{"role": {"a": 1}, "content": "hi"}]}, "messages[0].role"),
    ("nested 100,000 deep", raw_chat('"hi"', ', "metadata": ' + "[" * 100_000 + "]" * 100_000), None, None),
    ("nested 100 deep", raw_chat('"hi"', ', "metadata": ' + "[" * 100 + "]" * 100), None, "metadata" + "[0]" * 64),
    ("5000-digit integer", raw_chat('"hi"', ', "seed": ' + "7" * 5000), None, None),
    ("lone surrogate in content", raw_chat('"hi \\ud800 there"'), None, "messages[0].content"),
    ("lone surrogate in a URL", raw_chat('[{"type": "image_url", "image_url": {"url": "http://a\\udc00.example/x.png"}}]'),
     None, "messages[0].content[0].image_url.url"),
    ("lone surrogate in a prompt", f'{{"model": "{MODEL}", "prompt": "a\\ud83d b"}}'.encode(), None, "prompt"),
    ("malformed IPv6 URL", None, chat([{"type": "image_url", "image_url": {"url": "http://[::1/a.png"}}]), "messages"),
    ("aspect ratio over 200", None, "THIN", "messages"),
]


@pytest.mark.parametrize("case,raw,body,param", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_input_is_a_400_naming_the_field(server, case, raw, body, param):
    from PIL import Image

    if body == "THIN":
        buffer = io.BytesIO()
        Image.new("RGB", (402, 2), "red").save(buffer, format="PNG")
        body = chat([{"type": "image_url", "image_url": {"url": data_url(buffer.getvalue())}}])
    path = "/completions" if raw is not None and b'"prompt"' in raw else "/chat/completions"
    response = post(server, body, path=path, raw=raw)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert "\n" not in error["message"] and len(error["message"]) < 400


# ---- decompression bombs ------------------------------------------------------------------------------------------
def test_decompression_bombs_are_refused_before_decoding(server):
    bomb = data_url(png_bytes(12000, 12000))  # 144 million pixels in about 140 KB
    assert len(bomb) < 400_000
    body = chat([{"type": "image_url", "image_url": {"url": bomb}} for _ in range(3)] + [{"type": "text", "text": "?"}])
    before = rss_bytes()
    response = post(server, body)
    grown = rss_bytes() - before
    assert response.status_code == 400 and "12000x12000" in response.json()["error"]["message"]
    # Decoding even one would take 144 MB (grey) or 432 MB (as RGB); refused from the header, nothing grows.
    assert grown < 100 * 1024 * 1024, grown / 2**20
    assert post(server, chat("still fine?")).status_code == 200


def test_large_jpegs_decode_reduced():
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (3000, 3000), "red").save(buffer, format="JPEG")
    policy = MediaPolicy(max_image_pixels=9_000_000)
    image = load_image(buffer.getvalue(), policy)
    assert image.size == (1500, 1500)  # decoded at 1/2 scale: a quarter of the memory
    assert load_image(buffer.getvalue()).size == (3000, 3000)  # no cap, no reduction


# ---- slow fetches, slow heads, slow bodies, half-closed clients ------------------------------------------------
def test_a_dripping_url_is_cut_at_the_total_fetch_timeout(server, drip_url):
    completed = _Slow.completed
    response = post(server, chat([{"type": "image_url", "image_url": {"url": drip_url}}]))
    # The fetch timeout is 4 s. Had it applied per read, or only between reads of a buffer, the 60 bytes would
    # have been read to the end (12 s) before the answer: the drip completed, or "cannot decode image".
    assert response.status_code == 400 and "refused or failed" in response.json()["error"]["message"]
    time.sleep(1)  # the drip notices the hang-up at its next write
    assert _Slow.completed == completed


def test_dripping_fetches_do_not_hold_back_text_only_requests(server, drip_url):
    image_body = chat([{"type": "image_url", "image_url": {"url": drip_url}}])
    with ThreadPoolExecutor(7) as pool:
        drips = [pool.submit(post, server, image_body) for _ in range(6)]  # more than the 4 encode threads
        time.sleep(0.5)  # let them start fetching
        text = post(server, chat("just text"))
        pending = sum(not drip.done() for drip in drips)
        assert text.status_code == 200
        assert pending == 6  # the text-only request was answered while every drip still held its fetch
        assert all(drip.result().status_code == 400 for drip in drips)


def test_a_request_naming_many_slow_urls_holds_the_fetch_pool_for_one_deadline(server, drip_url):
    before = _Slow.fetches
    urls = [f"{drip_url}?copy={index}" for index in range(40)]  # 8 fetch threads: five deadlines if all ran
    response = post(server, chat([{"type": "image_url", "image_url": {"url": url}} for url in urls]))
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    time.sleep(0.5)
    # Half the pool (4 of 8 threads) at a time, and nothing more after the first failure: the rest never opened.
    assert _Slow.fetches - before <= 4, _Slow.fetches - before
    assert post(server, chat("text after")).status_code == 200


def test_a_fetch_dripping_its_headers_or_body_ends_at_its_deadline(slow_host):
    """httpx times each read, not the fetch: headers dripped a byte at a time were read for a minute, a body
    whose bytes come just under the read timeout ran to about one and a half deadlines."""
    from swiftlite.media_fetch import FetchRefused, fetch

    import httpx  # noqa: F401 - imported before the clock starts: the first import takes a few tenths of a second

    policy = MediaPolicy(fetch_timeout=1.0, allowed_media_domains=["127.0.0.1"])
    for path in ("/head", "/gaps"):
        started = time.monotonic()
        with pytest.raises(FetchRefused, match="timed out after 1s"):
            fetch(slow_host + path, policy)
        assert time.monotonic() - started < 1.25, path
    assert fetch(slow_host + "/red.png", policy) == _SlowHead.png


def test_a_hanging_name_lookup_ends_at_the_fetch_deadline(monkeypatch):
    """getaddrinfo has no timeout: a resolver that does not answer held the fetch as long as it hung. The
    resolver is the system's; here one name's lookup is made to hang (until the test ends) to stand for it."""
    from swiftlite.media_fetch import FetchRefused, fetch

    release, real = threading.Event(), socket.getaddrinfo

    def lookup(host, *args, **kwargs):
        if host == "hanging.example":
            release.wait(30)
            raise socket.gaierror("no answer")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    started = time.monotonic()
    try:
        with pytest.raises(FetchRefused, match=r"resolve 'hanging.example' within|timed out after 0.5s"):
            fetch("http://hanging.example/a.png", MediaPolicy(fetch_timeout=0.5,
                                                              allowed_media_domains=["hanging.example"]))
        assert time.monotonic() - started < 1.0
    finally:
        release.set()


def test_urls_dripping_their_headers_do_not_keep_the_fetch_pool(server, slow_host):
    """Two requests of four such URLs take all 8 fetch threads; once their deadline passed, the threads are
    free again and the next request's image is fetched."""
    dripping = chat([{"type": "image_url", "image_url": {"url": f"{slow_host}/head?{index}"}} for index in range(4)])
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: post(server, dripping), range(2)))
    assert [answer.status_code for answer in answers] == [400, 400]
    image = chat([{"type": "image_url", "image_url": {"url": f"{slow_host}/red.png"}}, {"type": "text", "text": "?"}])
    answer = post(server, image)
    assert answer.status_code == 200, answer.text


def read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(30)  # far beyond --request_timeout 2: reaching it means the server never closed
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_slow_request_heads_are_closed_with_408(server):
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    with socket.create_connection(("127.0.0.1", server.port)) as sock:  # says nothing at all: closed silently
        assert read_until_closed(sock) == b""


def test_a_slow_body_gets_408(server):
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json"
            "\r\nContent-Length: 500\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + b'{"model": ')
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer


def test_a_half_closed_client_gets_its_answer(server):
    body = json.dumps(chat("hi there")).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        answer = read_until_closed(sock)
    # Before the answer come zero or more "100 Continue" probes (a closed socket would have reset on them).
    final = answer[answer.index(b"HTTP/1.1 200"):]
    assert answer[:answer.index(b"HTTP/1.1 200")].replace(b"HTTP/1.1 100 Continue\r\n\r\n", b"") == b"", answer
    assert json.loads(final.split(b"\r\n\r\n", 1)[1])["object"] == "chat.completion"


# ---- /metrics -----------------------------------------------------------------------------------------------------
def test_metrics_keep_a_fixed_set_of_routes(server):
    before = httpx.get(server.url + "/metrics").text
    with httpx.Client() as http:
        http.get(server.url + '/x%22%7D%0Aswiftlite_injected_total 1%0A')
        for index in range(300):
            http.get(f"{server.url}/unknown/{index}")
    after = httpx.get(server.url + "/metrics").text
    assert "swiftlite_injected_total" not in after and "/unknown/" not in after
    assert len(after) < len(before) + 500  # one "other" series at most, not one per path
    assert 'swiftlite_requests_total{endpoint="other",status="404"}' in after


def test_a_refused_post_that_drips_its_body_is_answered_anyway(server):
    """A cross-site text/plain POST announcing a body it never sends still gets its 415, then the connection ends."""
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: text/plain"
            "\r\nContent-Length: 500\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head + b"x")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 415"), answer
