"""Serve an app with uvicorn from a background thread: for tests, notebooks and the benchmark.

The socket is bound here, before uvicorn starts, so port 0 picks a free port with no race.
"""

from __future__ import annotations

import socket
import threading
import time


class BackgroundServer:
    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, **uvicorn_options):
        import uvicorn

        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.host, self.port = self.socket.getsockname()[:2]
        uvicorn_options.setdefault("log_level", "warning")
        server = getattr(getattr(app, "state", None), "server", None)
        if server is not None:  # what `mm deploy` runs: slow request heads timed out, half-closed clients answered
            from swiftlite.server.connection import guarded_protocol

            uvicorn_options.setdefault("http", guarded_protocol(server.settings.request_timeout))
        self.server = uvicorn.Server(uvicorn.Config(app, **uvicorn_options))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="swiftlite-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self, timeout: float = 60.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.socket.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
