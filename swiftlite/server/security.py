"""The checks every request passes before a route sees it: Host (DNS rebinding), Content-Type (CSRF), CORS,
and the headers that keep the chat page out of other sites' frames.

Why each one:

- A web page the operator visits can POST to http://127.0.0.1:8000/ without asking: browsers send "simple"
  cross-site requests (Content-Type text/plain, form-urlencoded, multipart) without a CORS preflight. Requiring
  `application/json` on every POST makes the browser ask first (preflight), and without --cors_origins we
  never say yes.
- DNS rebinding: evil.example resolves to 127.0.0.1 after the page loaded, so the page's requests reach the
  local server as same-origin, with `Host: evil.example`. A server bound to loopback therefore accepts only
  loopback Host names (plus --allowed_hosts).
- CORS headers are sent only for the --cors_origins origins (starlette's CORSMiddleware, added by create_app).
- X-Frame-Options / CSP frame-ancestors stop click-jacking of the chat page; nosniff stops a browser from
  reading a JSON error as HTML.
"""

from __future__ import annotations

import asyncio
import json

DRAIN_BYTES = 64 * 1024 * 1024
DRAIN_SECONDS = 5.0
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]
JSON_BODY_METHODS = {"POST", "PUT", "PATCH"}


def is_loopback(host: str) -> bool:
    import ipaddress

    host = host.strip("[]").lower()
    if host in LOOPBACK_HOSTS or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name part of a Host header: 'a.b:8000' -> 'a.b', '[::1]:8000' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class RequestGuard:
    """ASGI middleware in front of the app (and of the CORS middleware, when there is one)."""

    def __init__(self, app, bind_host: str, allowed_hosts: list[str] | None, on_refused=None):
        self.app = app
        names = {name.strip("[]").lower() for name in allowed_hosts or []}
        self.any_host = "*" in names or (allowed_hosts is None and not is_loopback(bind_host))
        self.hosts = names - {"*"}
        self.on_refused = on_refused  # (path, status) -> None: the metrics

    def host_allowed(self, header: str) -> bool:
        if self.any_host:
            return True
        name = host_name(header)
        return is_loopback(name) or name in self.hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + SECURITY_HEADERS}
            await send(message)

        if not self.host_allowed(headers.get("host", "")):
            return await self._refuse(scope, receive, send_with_headers, 403, "host_not_allowed",
                                      "this server answers only to its loopback names (localhost, 127.0.0.1): a "
                                      "request for another Host is refused as DNS rebinding; start it with "
                                      "--allowed_hosts NAME to accept NAME")
        if scope["method"] in JSON_BODY_METHODS:
            media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media_type != "application/json":
                return await self._refuse(scope, receive, send_with_headers, 415, "unsupported_media_type",
                                          "the request body must be JSON sent with 'Content-Type: application/json' "
                                          f"(got {media_type[:40] or 'none'!r})")
        await self.app(scope, receive, send_with_headers)

    async def _refuse(self, scope, receive, send, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                     "code": code}}).encode()
        # Read (and drop) what the client is still sending, so it sees our answer and not a reset connection;
        # bounded in bytes and time, so a refused client cannot hold the connection by dripping its body.
        async def drain() -> None:
            more, drained = scope["method"] != "GET", 0
            while more and drained < DRAIN_BYTES:
                received = await receive()
                drained += len(received.get("body", b""))
                more = received.get("more_body", False) and received["type"] == "http.request"

        try:
            await asyncio.wait_for(drain(), DRAIN_SECONDS)
        except asyncio.TimeoutError:
            pass
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        if self.on_refused is not None:
            self.on_refused(scope["path"], status)

