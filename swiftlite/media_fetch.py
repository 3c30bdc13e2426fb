"""Fetching media URLs (http/https) with the guards a server facing the network needs.

A request that names an image URL makes the server open a connection on its behalf. Without guards that is a
server-side request forgery: `http://127.0.0.1:6379/`, `http://169.254.169.254/` (cloud metadata) or any host
of the operator's private network, in any of the spellings the C resolver accepts (`127.1`, `0x7f000001`,
`2130706433`, `0177.0.0.1`, `[::ffff:127.0.0.1]`), directly or through a redirect. So, with
``policy.public_urls_only`` (what `mm deploy` sets):

- the URL is parsed strictly (http/https only, no user:password@, a valid port, a well-formed IPv6 literal);
- the host is resolved once and every address it resolves to must be public (not loopback, private,
  link-local, multicast, reserved or unspecified; IPv4-mapped IPv6 is judged as its IPv4 address);
- the connection goes to that vetted address (the Host header and TLS SNI keep the name), so a DNS answer that
  changes between the check and the connect (DNS rebinding) cannot win;
- redirects are followed by hand, at most MAX_REDIRECTS, and every hop is vetted the same way;
- the whole fetch has one deadline (``policy.fetch_timeout``), not a per-read timeout a drip can renew: at the
  deadline the connection is shut down (`Deadline`), whether the server drips its headers or its body; the
  body is capped at ``policy.max_bytes``;
- proxies from the environment are not used (trust_env=False): the vetted address is the one connected to;
- every refused or failed fetch gets the same message, so error texts cannot serve as a port scanner; the real
  reason goes to the server log.

``policy.allowed_media_domains`` (vLLM's `--allowed-media-domains`) switches to an allow list: only URLs whose
host name is listed are fetched, and those may be any address, loopback included (a local media server).

Without ``public_urls_only`` (training and `mm infer`: the data is the user's own) any host is fetched and the
message says what went wrong.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass

logger = logging.getLogger("swiftlite.media")

MAX_REDIRECTS = 5
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class FetchRefused(Exception):
    """Why one fetch failed or was refused; the caller turns it into a MediaError."""


@dataclass
class Target:
    url: str  # what was asked for (this hop)
    scheme: str
    host: str  # the host name as written (lower case, IPv6 without brackets)
    port: int
    addresses: list[str]  # the vetted IP addresses to connect to, in the resolver's order
    path: str  # path and query


def parse_url(url: str) -> urllib.parse.SplitResult:
    """Strict parsing: refuse what different parsers read differently (userinfo, backslashes, control bytes)."""
    if any(ord(char) < 33 or ord(char) == 127 for char in url) or "\\" in url:
        raise FetchRefused("control characters, spaces or backslashes in the URL")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise FetchRefused("the URL is not valid Unicode (lone surrogate)") from None
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
    except ValueError as error:
        raise FetchRefused(f"malformed URL ({error})") from None
    if parts.scheme not in ("http", "https"):
        raise FetchRefused(f"scheme {parts.scheme!r} (only http and https)")
    if "@" in parts.netloc:
        # `http://u:p@127.0.0.1/` is read as host `u:p@127.0.0.1` by some resolvers and as 127.0.0.1 by others.
        raise FetchRefused("user:password@ in the URL")
    if not parts.hostname:
        raise FetchRefused("no host in the URL")
    return parts


def address_is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        for embedded in (address.ipv4_mapped, address.sixtofour):
            if embedded is not None:
                return address_is_public(embedded)
        if address.teredo is not None:
            return False
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_loopback
                                      or address.is_link_local or address.is_private or address.is_unspecified)


_resolvers = None  # a few threads for getaddrinfo, which has no timeout of its own (resolve)


def resolve(host: str, port: int, seconds: float | None) -> list:
    """socket.getaddrinfo within `seconds`: a resolver that hangs must not hold a fetch past its deadline. The
    lookup runs in a pool of 4 threads; one that never returns keeps its thread, so a hanging resolver leaves
    at most 4 threads stuck, and later lookups then wait in the queue and time out like the first."""
    global _resolvers
    if seconds is None:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    import concurrent.futures

    if _resolvers is None:
        _resolvers = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="swiftlite-resolve")
    future = _resolvers.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        return future.result(timeout=max(0.0, seconds))
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise FetchRefused(f"cannot resolve {host!r} within {seconds:.3g}s") from None


def vet(url: str, policy, seconds: float | None = None) -> Target:
    """Parse `url`, resolve its host (within `seconds`, if given) and check every address against the policy;
    the address to connect to."""
    parts = parse_url(url)
    host = parts.hostname.lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    allowed = policy.allowed_media_domains
    if allowed is not None and host not in {name.lower().strip("[]") for name in allowed}:
        raise FetchRefused(f"host {host!r} is not in --allowed_media_domains")
    try:
        host.encode("idna")
        infos = resolve(host, port, seconds)
    except (UnicodeError, OSError) as error:
        raise FetchRefused(f"cannot resolve {host!r} ({error})") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise FetchRefused(f"{host!r} resolves to no address")
    if policy.public_urls_only and allowed is None:
        # Every answer must be public: a name that resolves to one public and one private address is refused.
        private = [str(address) for address in addresses if not address_is_public(address)]
        if private:
            raise FetchRefused(f"{host!r} resolves to a non-public address {private[0]}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(url, parts.scheme, host, port, [str(address) for address in dict.fromkeys(addresses)], path)


class Deadline:
    """Shuts the fetch's connection down when its deadline passes.

    httpx's timeouts apply to each socket operation, so a server that drips its status line and headers a byte
    at a time, each byte within the read timeout, held a fetch thread for as long as it liked (hours, for 64 KB
    of headers), and a body dripped just under the read timeout ran to twice the deadline. At the deadline a
    timer thread shuts the socket down, which wakes the blocked read with an end of stream. The socket comes
    from httpcore's `trace` request extension (the connection's stream, replaced by its TLS stream).
    """

    def __init__(self, seconds: float):
        self.ends = time.monotonic() + seconds  # the one deadline that the lookups, connects and reads count down
        self.stream = None  # the connection being read now (httpcore's network stream)
        self.expired = False
        self.lock = threading.Lock()
        self.timer = threading.Timer(max(0.0, seconds), self._expire)
        self.timer.daemon = True
        self.timer.start()

    def trace(self, event: str, info: dict) -> None:
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            with self.lock:
                self.stream = info.get("return_value")
                if self.expired:  # the connect finished after the deadline: cut it at once
                    self._shut_down()

    def _expire(self) -> None:
        with self.lock:
            self.expired = True
            self._shut_down()

    def _shut_down(self) -> None:
        sock = self.stream.get_extra_info("socket") if self.stream is not None else None
        if sock is not None:
            try:
                # socket.socket's own shutdown, also for an SSLSocket: its override would drop the TLS state
                # under the thread that is reading it.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def cancel(self) -> None:
        self.timer.cancel()


def fetch(url: str, policy, kind: str = "image") -> bytes:
    """The body of `url` under `policy`; raises FetchRefused with the reason."""
    guard = Deadline(policy.fetch_timeout)
    try:
        return _fetch(url, policy, guard)
    except FetchRefused:
        if guard.expired:  # the cut shows up as a closed connection; say what it was
            raise FetchRefused(f"timed out after {policy.fetch_timeout:g}s") from None
        raise
    finally:
        guard.cancel()


def _fetch(url: str, policy, guard: Deadline) -> bytes:
    import httpx

    deadline = guard.ends
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        target = vet(current, policy, deadline - time.monotonic())
        default_port = 443 if target.scheme == "https" else 80
        name = f"[{target.host}]" if ":" in target.host else target.host
        host_header = name if target.port == default_port else f"{name}:{target.port}"
        for index, address in enumerate(target.addresses):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchRefused(f"timed out after {policy.fetch_timeout:g}s")
            ip = f"[{address}]" if ":" in address else address
            request_url = f"{target.scheme}://{ip}:{target.port}{target.path}"
            # Connect to the vetted address; the name goes into Host and, for TLS, into SNI and the certificate
            # check.
            extensions = {"trace": guard.trace}
            if target.scheme == "https":
                extensions["sni_hostname"] = target.host
            try:
                with httpx.Client(timeout=httpx.Timeout(remaining), follow_redirects=False, trust_env=False) as client:
                    request = client.build_request("GET", request_url, headers={
                        "Host": host_header, "User-Agent": "swiftlite-media/1", "Accept-Encoding": "identity"},
                        extensions=extensions)
                    response = client.send(request, stream=True)
                    try:
                        if response.status_code in REDIRECT_STATUSES and response.headers.get("location"):
                            current = urllib.parse.urljoin(current, response.headers["location"])
                            break  # vet the next hop
                        if response.status_code != 200:
                            raise FetchRefused(f"HTTP {response.status_code} {response.reason_phrase}")
                        return _read_body(response, policy, deadline)
                    finally:
                        response.close()
            except httpx.TimeoutException:
                raise FetchRefused(f"timed out after {policy.fetch_timeout:g}s") from None
            except httpx.ConnectError as error:
                if index + 1 < len(target.addresses):
                    continue  # e.g. localhost: ::1 first, while the server listens on 127.0.0.1 only
                reason = str(error) or type(error).__name__
                if "refused" in reason.lower() or "errno 111" in reason.lower():
                    reason = "connection refused"
                raise FetchRefused(reason) from None
            except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as error:
                raise FetchRefused(f"{type(error).__name__}: {error}") from None
    raise FetchRefused(f"more than {MAX_REDIRECTS} redirects")


def _read_body(response, policy, deadline: float) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise FetchRefused(f"larger than the {policy.max_bytes} byte limit")
    data = bytearray()
    for chunk in response.iter_raw():  # no chunk_size: httpx would gather chunks up to it, ignoring the deadline
        data += chunk
        if len(data) > policy.max_bytes:  # stop at the cap: never buffer an unbounded body
            raise FetchRefused(f"larger than the {policy.max_bytes} byte limit")
        if time.monotonic() > deadline:  # one deadline for the whole body: a drip cannot renew it
            raise FetchRefused(f"timed out after {policy.fetch_timeout:g}s")
    return bytes(data)


def refused_message(url_text: str, kind: str, policy) -> str:
    """The one text for every refused or failed fetch of a guarded server (no port-scan or existence oracle)."""
    return (f"cannot fetch {kind} URL {url_text}: refused or failed (this server fetches only public http(s) "
            f"addresses, or hosts in --allowed_media_domains, answering 200 within {policy.fetch_timeout:g}s "
            f"with at most {policy.max_bytes} bytes)")
