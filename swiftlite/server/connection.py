"""uvicorn's h11 connection with two fixes for clients that are slow or half-closed.

- Slow headers (slowloris): uvicorn times out idle keep-alive connections, but a client that sends its request
  head a byte at a time, or opens a connection and says nothing, is kept forever (every byte renews
  uvicorn's keep-alive timer). Here every request head must be complete within `head_timeout` seconds of
  the connection opening (or of the previous answer); otherwise the connection is closed, with a 408 when part
  of a head had arrived (a connection that sent nothing is closed silently: a browser's spare preconnected
  socket must not read a 408 as the answer to the request it sends at that moment).
  A slow body is the app's to bound (`OpenAIServer._read_json`, the same --request_timeout).
- Half-closed clients: a client may send its request and then shut down its sending side (SHUT_WR), as some
  tools and proxies do. asyncio closes the whole transport on that EOF unless the protocol asks to keep it,
  so the answer was never written. Here the transport stays open while a request is being answered, and is
  closed once the answer is out. But a client that closed its socket altogether (it gave up waiting) sends
  the same EOF, and its generation must stop. The two differ only in what happens to data sent to them: so
  until the answer starts we send `HTTP/1.1 100 Continue` every PROBE_INTERVAL seconds (an HTTP/1.1 client
  must skip 1xx responses it did not ask for). A closed socket answers with a reset, the next write fails,
  uvicorn reports the disconnect to the app and the generation stops; a half-closed client reads on.
"""

from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
PROBE_INTERVAL = 0.5


class GuardedH11Protocol(H11Protocol):
    head_timeout: float = 30.0  # set per server by `guarded_protocol`

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.half_closed = False
        self.head_timer = None
        self.waiting_cycle = None
        self._expect_head()

    # ---- request heads must arrive in time -------------------------------------------------------------
    def _expect_head(self) -> None:
        """Start the clock for the next request head, unless a (pipelined) request is already being answered."""
        self._cancel_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            return
        self.waiting_cycle = self.cycle
        self.head_started = False
        self.head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _cancel_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_too_slow(self) -> None:
        self.head_timer = None
        if self.cycle is self.waiting_cycle and not self.transport.is_closing():
            if self.head_started:
                self.transport.write(REQUEST_TIMEOUT)  # we close right after, so bypassing h11 is fine
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.head_timer is not None:
            self.head_started = True
        super().data_received(data)
        if self.head_timer is not None and self.cycle is not self.waiting_cycle:
            self._cancel_head_timer()  # a whole request head arrived: the app's body deadline takes over

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.half_closed:
            self.transport.close()  # the client sends nothing more; close() still flushes our answer
        elif not self.transport.is_closing():
            self._expect_head()

    def connection_lost(self, exc) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    # ---- half-closed clients ---------------------------------------------------------------------------
    def eof_received(self):
        if self.cycle is not None and not self.cycle.response_complete:
            self.half_closed = True
            self._probe()
            return True  # keep the transport open: the answer is still to be written
        return None  # nothing in flight: let asyncio close the connection

    def _probe(self) -> None:
        """Until the answer starts, write a 1xx now and then: a closed peer resets, a half-closed one reads on."""
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or cycle.response_started or cycle.response_complete:
            return
        self.transport.write(CONTINUE)
        self.loop.call_later(PROBE_INTERVAL, self._probe)


def guarded_protocol(head_timeout: float) -> type[GuardedH11Protocol]:
    """The protocol class for uvicorn.Config(http=...), with this server's --request_timeout."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"head_timeout": head_timeout})
