"""`mm deploy` cannot be turned against its host: no fetches of loopback/private addresses (in any spelling, through
redirects), no cross-site or DNS-rebinding requests, no CORS unless asked, frame/nosniff headers, and error texts
that reveal neither ports, nor files, nor the server's directories.

A real HTTP server on 127.0.0.1 plays the operator's internal service; the model servers are `build_app` (what
`mm deploy` serves) on a free loopback port.
"""

from __future__ import annotations

import http.server
import re
import socket

import httpx
import pytest

from swiftlite.media import MediaPolicy
from swiftlite.media_fetch import FetchRefused, vet
from test_deploy_support import http_server, running_server

MODEL = "qwen2-vl"


class _Internal(http.server.BaseHTTPRequestHandler):
    """An "internal" service: an image, redirects to anywhere, and a record of the Host headers it saw."""

    png = b""
    hosts: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).hosts.append(self.headers.get("Host", ""))
        if self.path == "/red.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(self.png)))
            self.end_headers()
            self.wfile.write(self.png)
        elif self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path[len("/redirect?to="):])
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404)


@pytest.fixture(scope="module")
def internal(shape_images):
    _Internal.png = shape_images["red"].read_bytes()
    with http_server(_Internal) as url:
        yield int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def default_server(qwen2_vl_dir):
    with running_server(model=str(qwen2_vl_dir), max_new_tokens=2) as running:
        yield running


@pytest.fixture(scope="module")
def allowing_server(qwen2_vl_dir):
    with running_server(model=str(qwen2_vl_dir), max_new_tokens=2, allowed_media_domains=["127.0.0.1", "localhost"],
                        media_fetch_timeout=5) as running:
        yield running


def ask_with_image(server, url: str) -> httpx.Response:
    body = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what colour?"}]}]}
    return httpx.post(server.base_url + "/chat/completions", json=body, timeout=60)


def spellings(port: int) -> list[str]:
    """The loopback service's image, in every spelling a resolver takes for 127.0.0.1 (or ::1)."""
    return [f"http://{host}:{port}/red.png" for host in (
        "127.0.0.1", "127.1", "0x7f000001", "2130706433", "0177.0.0.1", "[::ffff:127.0.0.1]", "localhost", "[::1]",
        "127.0.0.2", "0.0.0.0", "u:p@127.0.0.1", "127.0.0.1:80@127.0.0.1")]


# ---- SSRF ------------------------------------------------------------------------------------------------
def test_loopback_urls_are_refused_by_default_in_every_spelling(default_server, internal):
    before = len(_Internal.hosts)
    messages = set()
    for url in spellings(internal) + [f"http://localhost:{internal}/redirect?to=http://127.0.0.1:{internal}/red.png"]:
        response = ask_with_image(default_server, url)
        assert response.status_code == 400, (url, response.text)
        error = response.json()["error"]
        assert error["param"] == "messages"
        messages.add(re.sub(r"URL \S+:", "URL X:", error["message"]))
    assert len(_Internal.hosts) == before  # not one connection reached the internal service
    assert len(messages) == 1, messages  # one text for all: no way to tell which were resolvable or open


def test_every_spelling_of_a_private_address_is_refused_after_resolution():
    policy = MediaPolicy(public_urls_only=True)
    hosts = ["127.1", "0x7f000001", "2130706433", "0177.0.0.1", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "10.0.0.1",
             "192.168.1.1", "172.16.0.1", "169.254.169.254", "[fe80::1]", "224.0.0.1", "[ff02::1]", "0.0.0.0",
             "240.0.0.1", "100.64.0.1", "[::1]", "[2002:7f00:1::]", "[fc00::1]", "localhost"]
    for host in hosts:
        with pytest.raises(FetchRefused):
            vet(f"http://{host}/a.png", policy)
    for url in ("http://[::1/a.png", "http://a.png:99999/", "http://host:port/", "http://u@8.8.8.8/",
                "http://8.8.8.8\\@127.0.0.1/", "http://8.8.8.8 /a.png", "http://\udc80.example/"):
        with pytest.raises(FetchRefused):
            vet(url, policy)
    # A public literal passes, and the connection goes to the vetted address.
    assert vet("https://8.8.8.8/a.png", policy).addresses == ["8.8.8.8"]


def test_allowed_media_domains_allows_exactly_the_listed_hosts(allowing_server, internal):
    ok = ask_with_image(allowing_server, f"http://127.0.0.1:{internal}/red.png")
    assert ok.status_code == 200, ok.text
    assert _Internal.hosts[-1] == f"127.0.0.1:{internal}"
    via_name = ask_with_image(allowing_server, f"http://localhost:{internal}/red.png")
    assert via_name.status_code == 200, via_name.text
    assert _Internal.hosts[-1] == f"localhost:{internal}"  # connected to the vetted address, Host kept the name
    # Other spellings of the same address are other host names: not on the list, refused.
    for url in (f"http://127.1:{internal}/red.png", f"http://0x7f000001:{internal}/red.png",
                f"http://[::ffff:127.0.0.1]:{internal}/red.png", f"http://u:p@127.0.0.1:{internal}/red.png"):
        assert ask_with_image(allowing_server, url).status_code == 400, url


def test_every_redirect_hop_is_vetted(allowing_server, internal):
    base = f"http://localhost:{internal}/redirect?to="
    followed = ask_with_image(allowing_server, base + f"http://127.0.0.1:{internal}/red.png")
    assert followed.status_code == 200, followed.text  # a redirect to a listed host is followed
    before = len(_Internal.hosts)
    for target in (f"http://127.1:{internal}/red.png", f"ftp://127.0.0.1:{internal}/red.png", "file:///etc/hostname",
                   f"gopher://127.0.0.1:{internal}/"):
        response = ask_with_image(allowing_server, base + target)
        assert response.status_code == 400, (target, response.text)
        assert "refused or failed" in response.json()["error"]["message"]
    assert len(_Internal.hosts) == before + 4  # each first hop only; no refused hop was fetched


def test_refused_and_failed_fetches_read_alike(allowing_server, internal):
    """An open port (404), a closed port, a refused host and a bad image URL: one text, so no port scan."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    urls = [f"http://127.0.0.1:{internal}/missing.png", f"http://127.0.0.1:{closed}/missing.png",
            f"http://10.1.2.3:{internal}/missing.png", f"http://127.0.0.1:{internal}/redirect?to=ftp://x/y"]
    texts = set()
    for url in urls:
        response = ask_with_image(allowing_server, url)
        assert response.status_code == 400
        texts.add(re.sub(r"URL \S+:", "URL X:", response.json()["error"]["message"]))
    assert len(texts) == 1, texts


def test_media_fetch_false_refuses_every_url(qwen2_vl_dir, internal):
    with running_server(model=str(qwen2_vl_dir), media_fetch=False, allowed_media_domains=["127.0.0.1"]) as server:
        response = ask_with_image(server, f"http://127.0.0.1:{internal}/red.png")
    assert response.status_code == 400 and "--media_fetch false" in response.json()["error"]["message"]


# ---- CSRF and DNS rebinding ---------------------------------------------------------------------------------
def chat_body() -> dict:
    return {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_simple_cross_site_posts_are_refused(default_server, content_type):
    import json

    headers = {"Origin": "https://evil.example"}
    if content_type:
        headers["Content-Type"] = content_type
    for path in ("/chat/completions", "/completions"):
        response = httpx.post(default_server.base_url + path, content=json.dumps(chat_body()), headers=headers)
        assert response.status_code == 415, response.text
        assert response.json()["error"]["code"] == "unsupported_media_type"
        assert "access-control-allow-origin" not in response.headers


def test_a_foreign_host_header_is_refused_on_a_loopback_server(default_server):
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "192.168.1.5"):
        response = httpx.post(default_server.base_url + "/chat/completions", json=chat_body(), headers={"Host": host})
        assert response.status_code == 403, (host, response.text)
        assert "--allowed_hosts" in response.json()["error"]["message"]
        assert httpx.get(default_server.url + "/", headers={"Host": host}).status_code == 403
    for host in (f"127.0.0.1:{default_server.port}", f"localhost:{default_server.port}", "[::1]", "localhost"):
        assert httpx.post(default_server.base_url + "/chat/completions", json=chat_body(),
                          headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_and_cors_origins(qwen2_vl_dir):
    with running_server(model=str(qwen2_vl_dir), max_new_tokens=2, allowed_hosts=["models.internal"],
                        cors_origins=["https://app.example"]) as server:
        ok = httpx.post(server.base_url + "/chat/completions", json=chat_body(),
                        headers={"Host": "models.internal", "Origin": "https://app.example"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
        assert httpx.get(server.base_url + "/models", headers={"Host": "other.internal"}).status_code == 403
        preflight = httpx.options(server.base_url + "/chat/completions", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization"})
        assert preflight.status_code == 200 and "POST" in preflight.headers["access-control-allow-methods"]
        foreign = httpx.options(server.base_url + "/chat/completions", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in foreign.headers


def test_no_cors_headers_by_default_and_the_page_cannot_be_framed(default_server):
    response = httpx.get(default_server.base_url + "/models", headers={"Origin": "https://evil.example"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    preflight = httpx.options(default_server.base_url + "/chat/completions", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code >= 400 and "access-control-allow-origin" not in preflight.headers
    for path in ("/", "/static/app.js", "/v1/models", "/health"):
        headers = httpx.get(default_server.url + path).headers
        assert headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["x-content-type-options"] == "nosniff", path


# ---- information leaks ------------------------------------------------------------------------------------------
def test_local_path_errors_reveal_neither_the_directory_nor_what_exists(qwen2_vl_dir, tmp_path):
    media = tmp_path / "allowed-media-dir"
    media.mkdir()
    outside = tmp_path / ("o" * 80 + ".png")  # long and base64-looking: read as base64 unless it is a file
    outside.write_bytes(b"not an image")
    with running_server(model=str(qwen2_vl_dir), allowed_local_media_path=str(media)) as server:
        def message(source: str) -> str:
            response = ask_with_image(server, source)
            assert response.status_code == 400, response.text
            return response.json()["error"]["message"]

        missing = message("missing.png")
        assert str(media) not in missing and str(tmp_path) not in missing and "missing.png" in missing
        for existing, absent in (("/etc/hostname", "/etc/no-such-file-here"),
                                 (str(outside), str(outside).replace("ooo", "ppp"))):
            same = [re.sub(r"path \S+ is", "path P is", message(path)) for path in (existing, absent)]
            assert same[0] == same[1] and "outside the directory" in same[0]
        nul = ask_with_image(server, "a\u0000b.png")
        assert nul.status_code == 400 and "NUL" in nul.json()["error"]["message"]


def test_long_names_are_not_echoed_whole(default_server):
    name = "m" * 1_000_000
    response = httpx.post(default_server.base_url + "/chat/completions", json={**chat_body(), "model": name})
    assert response.status_code == 404 and len(response.text) < 1000
    response = httpx.post(default_server.base_url + "/chat/completions", json={**chat_body(), "x" * 100_000: 1})
    assert response.status_code == 400 and len(response.text) < 1000
    response = httpx.get(default_server.url + "/" + "p" * 6000)
    assert response.status_code == 404 and len(response.text) < 1000


@pytest.mark.parametrize("flags,words", [
    (["--cors_origins", "app.example.com"], "--cors_origins 'app.example.com'"),
    (["--allowed_media_domains", "http://media.example.com/"], "--allowed_media_domains 'http://media.example.com/'"),
    (["--allowed_hosts", "a b"], "--allowed_hosts 'a b'"),
    (["--request_timeout", "0"], "--request_timeout 0"),
])
def test_bad_security_flags_fail_before_loading(capsys, flags, words):
    from swiftlite.cli import main

    assert main(["deploy", "--model", "no-such-model-dir", *flags]) == 1
    error = capsys.readouterr().err
    assert words in error and "Traceback" not in error


def test_which_hosts_a_server_answers_to():
    from swiftlite.server.security import RequestGuard

    def allowed(bind, allowed_hosts, header):
        return RequestGuard(None, bind, allowed_hosts).host_allowed(header)

    assert allowed("127.0.0.1", None, "localhost:8000") and allowed("127.0.0.1", None, "[::1]:8000")
    assert allowed("::1", None, "127.0.0.1") and allowed("localhost", None, "app.localhost:8000")
    assert not allowed("127.0.0.1", None, "127.0.0.1.evil.example") and not allowed("127.0.0.1", None, "")
    assert allowed("0.0.0.0", None, "anything.example")  # exposed on purpose: like vLLM, any Host
    assert not allowed("0.0.0.0", ["models.example"], "anything.example")
    assert allowed("0.0.0.0", ["models.example"], "models.example:443") and allowed("0.0.0.0", ["*"], "x")
