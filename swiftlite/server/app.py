"""The HTTP server: OpenAI-compatible routes on starlette, in front of the batching engine.

A request first passes the guard (server/security.py: Host, Content-Type, CORS, frame headers). A generation
request then goes: authorise -> read the body (capped, within --request_timeout) -> parse and check fields
(event loop) -> fetch its media URLs (fetch pool, swiftlite/media_fetch.py) -> load media and encode (encode
pool) -> submit to the engine (429 when its queue is full) -> answer as one JSON or as server-sent events.
Everything that can be the client's fault is found before the response starts, so it gets a 4xx; a failure
after a stream has started is sent as an error event and the stream is closed.

Routes: GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions, POST /v1/completions, GET /health,
GET /metrics, and with `web_ui` the chat page at / (files under /static/). `--api_key` guards the /v1 routes;
/health, /metrics and the page stay open (the page asks for the key when /v1 answers 401).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from swiftlite.engine.worker import (
    ChoiceFinished,
    EngineFailed,
    EngineRequest,
    EngineStopped,
    QueueFull,
    TokenDelta,
)
from swiftlite.server.chat_request import parse_chat_request
from swiftlite.server.completion_request import parse_completion_request
from swiftlite.server.encoding import encode_request
from swiftlite.server.errors import APIError, bad_request, from_exception
from swiftlite.server.json_body import parse_json_body
from swiftlite.server.metrics import Metrics
from swiftlite.server.protocol import RequestLimits
from swiftlite.server.responses import ResponseBuilder, sse
from swiftlite.server.security import RequestGuard

logger = logging.getLogger("swiftlite.server")


@dataclass
class ServedModel:
    """One entry of /v1/models: a name clients put in `model`, and the adapter it runs with."""

    name: str
    adapter: str | None  # peft adapter name inside the model; None is the base model
    root: str  # the checkpoint directory or hub id it came from
    parent: str | None = None  # for an adapter: the model it applies to
    is_chat: bool = True
    is_multimodal: bool = True
    created: int = field(default_factory=lambda: int(time.time()))
    modalities: tuple[str, ...] = ("text", "image")  # what requests may carry: the web page offers audio by it


@dataclass
class ServerSettings:
    api_key: str | None = None
    max_request_bytes: int = 32 * 1024 * 1024
    limits: RequestLimits = field(default_factory=RequestLimits)
    encode_workers: int = 4  # threads that load images and encode prompts
    shutdown_timeout: float = 10.0  # seconds the engine's running batch may take to finish on shutdown
    web_ui: bool = False  # serve the chat page (swiftlite/server/static) at /
    fetch_workers: int = 8  # threads that fetch media URLs: separate from encode_workers, so slow URLs only
    # delay the requests that name them, never text-only ones
    request_timeout: float = 30.0  # seconds a client may take to send a request head, and again its body
    bind_host: str = "127.0.0.1"  # loopback: only loopback Host names are answered (DNS rebinding)
    allowed_hosts: list[str] | None = None  # --allowed_hosts
    cors_origins: list[str] | None = None  # --cors_origins


class OpenAIServer:
    def __init__(self, engine, template, models: list[ServedModel], settings: ServerSettings,
                 generation_config=None, metrics: Metrics | None = None):
        self.engine = engine
        self.template = template
        self.models = models
        self.settings = settings
        self.generation_config = generation_config
        self.metrics = metrics or engine.metrics or Metrics()
        self.encode_pool: ThreadPoolExecutor | None = None
        self.fetch_pool: ThreadPoolExecutor | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.encode_pool = ThreadPoolExecutor(self.settings.encode_workers, thread_name_prefix="swiftlite-encode")
        self.fetch_pool = ThreadPoolExecutor(self.settings.fetch_workers, thread_name_prefix="swiftlite-fetch")
        if self.engine.thread is None:
            self.engine.start()
        try:
            yield
        finally:
            # uvicorn gets here after in-flight requests finished or were cancelled (--shutdown_timeout).
            await asyncio.to_thread(self.engine.shutdown, self.settings.shutdown_timeout)
            self.encode_pool.shutdown(wait=False, cancel_futures=True)
            self.fetch_pool.shutdown(wait=False, cancel_futures=True)

    # ---- small routes -------------------------------------------------------------------------------
    async def list_models(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except APIError as error:
            return self._error(request, error)
        return self._json(request, {"object": "list", "data": [self._model_card(m) for m in self.models]})

    async def retrieve_model(self, request: Request) -> Response:
        try:
            self._authorize(request)
            served = self._served_model(request.path_params["model"])
        except APIError as error:
            return self._error(request, error)
        return self._json(request, self._model_card(served))

    def _model_card(self, served: ServedModel) -> dict:
        return {"id": served.name, "object": "model", "created": served.created, "owned_by": "swiftlite",
                "root": served.root, "parent": served.parent, "max_model_len": self.settings.limits.max_model_len,
                "is_multimodal": served.is_multimodal, "is_chat": served.is_chat,
                "modalities": list(served.modalities)}

    async def health(self, request: Request) -> Response:
        engine = self.engine
        alive = engine.thread is not None and engine.thread.is_alive() and not (engine.stopping or engine.draining)
        return JSONResponse({"status": "ok" if alive else "unavailable"}, status_code=200 if alive else 503)

    async def metrics_text(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    # ---- generation ---------------------------------------------------------------------------------
    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completion")

    async def _generate(self, request: Request, endpoint: str) -> Response:
        started = time.monotonic()
        try:
            self._authorize(request)
            body = await self._read_json(request)
            parse = parse_chat_request if endpoint == "chat" else parse_completion_request
            parsed = parse(body, self.settings.limits)
            served = self._served_model(parsed.model)
            if endpoint == "chat" and not self.template.chat_template:
                raise bad_request(f"model {served.name!r} has no chat template (it is a base model): send a raw "
                                  "prompt to POST /v1/completions instead", param="messages", code="no_chat_template")
            await self._fetch_media(parsed)
            loop = asyncio.get_running_loop()
            encoded = await loop.run_in_executor(self.encode_pool, encode_request, parsed, self.template,
                                                 self.settings.limits, self.generation_config)
            stream = self.engine.submit(EngineRequest(encoded.rows, encoded.params, served.adapter))
        except QueueFull as error:
            return self._error(request, APIError(429, f"the server is busy: {error}; retry later", code="queue_full"))
        except EngineStopped as error:
            return self._error(request, APIError(503, str(error), code="shutting_down"))
        except APIError as error:
            return self._error(request, error)
        except ClientDisconnect:  # the client hung up while sending its body: nobody to answer, nothing broke
            self.metrics.request_done(request.url.path, 499, time.monotonic() - started)
            return Response(status_code=499)
        except Exception as error:  # a bug: say so as a 500 in the OpenAI shape, and log the traceback
            logger.exception("request failed")
            return self._error(request, APIError(500, f"internal error: {type(error).__name__}: {error}"))

        builder = ResponseBuilder(parsed, served.name, self.template.tokenizer, self.template.meta.tool_parser)
        if parsed.stream:
            return StreamingResponse(
                self._events(request, stream, builder, encoded.prompt_tokens, started),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await self._complete(request, stream, builder, encoded.prompt_tokens, started)

    async def _complete(self, request, stream, builder, prompt_tokens: int, started: float) -> Response:
        """Wait for every choice while watching the connection: a client that leaves stops its generation."""
        results = [None] * len(stream.request.rows)
        watcher = asyncio.create_task(self._watch_disconnect(request, stream))
        first_token = None
        try:
            async for event in stream:
                if isinstance(event, TokenDelta) and first_token is None:
                    first_token = time.monotonic()
                    self.metrics.first_token(first_token - started)
                elif isinstance(event, ChoiceFinished):
                    results[event.choice] = event.result
                elif isinstance(event, EngineFailed):
                    return self._error(request, failure(event))
        finally:
            watcher.cancel()
            stream.cancel()  # no-op when finished; stops the rows when we leave early
        if watcher.done() and not watcher.cancelled() and watcher.result():
            self.metrics.request_cancelled()
            self.metrics.request_done(request.url.path, 499, time.monotonic() - started)
            return Response(status_code=499)  # nobody is listening any more
        return self._json(request, builder.final(results, prompt_tokens), started)

    async def _watch_disconnect(self, request: Request, stream) -> bool:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                stream.cancel()
                return True

    async def _events(self, request, stream, builder: ResponseBuilder, prompt_tokens: int, started: float):
        """The SSE body. Starlette cancels this generator when the client disconnects; `finally` stops the rows."""
        completion_tokens, first_token, complete, status = 0, None, False, 200
        try:
            if builder.chat:
                for index in range(len(stream.request.rows)):
                    yield sse(builder.role_chunk(index))
            async for event in stream:
                if isinstance(event, TokenDelta):
                    if first_token is None:
                        first_token = time.monotonic()
                        self.metrics.first_token(first_token - started)
                    chunk = builder.delta_chunk(event.choice, event.text)
                    if chunk is not None:  # None: text held back while a tool call may be starting
                        yield sse(chunk)
                elif isinstance(event, ChoiceFinished):
                    completion_tokens += len(event.result.token_ids)
                    yield sse(builder.finish_chunk(event.choice, event.result))
                elif isinstance(event, EngineFailed):
                    yield sse(failure(event).body())
                    complete, status = True, event.status  # the header said 200; the metrics say what happened
                    return
            if builder.parsed.include_usage:
                yield sse(builder.usage_chunk(prompt_tokens, completion_tokens))
            yield sse("[DONE]")
            complete = True
        finally:
            stream.cancel()
            if not complete:
                self.metrics.request_cancelled()
            self.metrics.request_done(request.url.path, status, time.monotonic() - started)

    # ---- request checks -----------------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        if self.settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # compare_digest takes the same time wherever the first difference is: no timing oracle for the key.
        matches = hmac.compare_digest(token.strip().encode(), self.settings.api_key.encode())
        if scheme.lower() != "bearer" or not matches:
            raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' with the "
                                "key the server was started with (--api_key)", code="invalid_api_key")

    async def _read_json(self, request: Request):
        limit = self.settings.max_request_bytes
        too_large = APIError(413, f"the request body is larger than {limit} bytes (--max_request_bytes); send "
                                  "images by URL or smaller", code="request_too_large")
        declared = request.headers.get("content-length", "")
        body, size = bytearray(), 0

        async def read() -> None:
            nonlocal size
            # Read the whole body even when it is too large (without keeping it): a client still sending when
            # we answer and close would see a broken pipe instead of our 413.
            async for chunk in request.stream():
                size += len(chunk)
                if size <= limit:
                    body.extend(chunk)
                elif size > 16 * limit:
                    break

        try:
            # One deadline for the whole body: a client dripping a byte at a time must not hold a slot forever.
            await asyncio.wait_for(read(), self.settings.request_timeout)
        except asyncio.TimeoutError:
            raise APIError(408, f"the request body did not arrive within {self.settings.request_timeout:g} seconds",
                           code="request_timeout") from None
        if size > limit or (declared.isdigit() and int(declared) > limit):
            raise too_large
        return parse_json_body(bytes(body))

    async def _fetch_media(self, parsed) -> None:
        """Fetch the request's http(s) media in the fetch pool, replacing each URL by its bytes.

        Encoding then never waits on the network, so URLs that drip hold fetch threads only, and text-only
        requests still find every encode thread free. Each fetch has the policy's total deadline and size cap.
        One request runs at most half the pool's fetches at once, all of them within that deadline (plus a
        second), and stops at its first failure: a request naming a thousand slow URLs holds four threads for
        one deadline, not the whole pool for a thousand.
        """
        from swiftlite.media import FetchedBytes, read_media_bytes

        policy = self.template.media_policy
        waiting = [(sources, index, kind) for prompt in parsed.prompts
                   for kind, sources in (("image", prompt.images), ("audio", prompt.audios))
                   for index, source in enumerate(sources)
                   if isinstance(source, str) and source.strip()[:8].lower().startswith(("http://", "https://"))]
        if not waiting:
            return
        loop = asyncio.get_running_loop()
        param = "messages" if parsed.endpoint == "chat" else "prompt"
        window = max(1, self.settings.fetch_workers // 2)
        deadline = loop.time() + policy.fetch_timeout + 1
        running: dict = {}  # future -> (sources, index)
        try:
            while waiting or running:
                while waiting and len(running) < window:
                    sources, index, kind = waiting.pop(0)
                    future = loop.run_in_executor(self.fetch_pool, read_media_bytes, sources[index], policy, kind)
                    running[future] = (sources, index)
                done, _ = await asyncio.wait(running, timeout=max(0.0, deadline - loop.time()),
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    raise bad_request(f"the request's media URLs were not all fetched within "
                                      f"{policy.fetch_timeout:g}s (--media_fetch_timeout)", param=param,
                                      code="invalid_media")
                for future in done:
                    sources, index = running.pop(future)
                    if future.exception() is not None:
                        raise from_exception(future.exception(), param=param)
                    sources[index] = FetchedBytes(future.result(), sources[index])
        finally:
            for future in running:  # abandoned: a running fetch still ends at its own deadline
                future.cancel()
                future.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody waits for it

    def _served_model(self, name: str | None) -> ServedModel:
        if name is None:
            return self.models[0]  # curl users often leave `model` out; vLLM serves its first model then
        for served in self.models:
            if served.name == name:
                return served
        names = ", ".join(repr(m.name) for m in self.models)
        shown = repr(name) if len(name) <= 80 else repr(name[:77] + "...")  # a 1 MB name is not echoed whole
        raise APIError(404, f"model {shown} is not served here; this server serves {names} (GET /v1/models)",
                       param="model", code="model_not_found")

    # ---- responses ----------------------------------------------------------------------------------
    def _json(self, request: Request, payload: dict, started: float | None = None) -> Response:
        latency = time.monotonic() - started if started is not None else None
        self.metrics.request_done(request.url.path, 200, latency)
        return JSONResponse(payload)

    def _error(self, request: Request, error: APIError) -> Response:
        self.metrics.request_done(request.url.path, error.status)
        return JSONResponse(error.body(), status_code=error.status)

    async def http_error(self, request: Request, exc: HTTPException) -> Response:
        """Starlette's own 404/405 (unknown path, wrong method) in the OpenAI error shape."""
        path = request.url.path if len(request.url.path) <= 80 else request.url.path[:77] + "..."
        message = f"{request.method} {path}: {exc.detail}"
        return self._error(request, APIError(exc.status_code, message, code="not_found" if exc.status_code == 404
                                             else "method_not_allowed"))


def failure(event: EngineFailed) -> APIError:
    """The engine's failure as an error: 500 for a failure of the model, 503 for a request cut off by shutdown."""
    return APIError(event.status, event.message, code=event.code or ("shutting_down" if event.status == 503
                                                                      else "generation_failed"))


def create_app(engine, template, models: list[ServedModel], settings: ServerSettings,
               generation_config=None, metrics: Metrics | None = None) -> Starlette:
    server = OpenAIServer(engine, template, models, settings, generation_config, metrics)
    routes = [
        Route("/v1/models", server.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", server.retrieve_model, methods=["GET"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.metrics_text, methods=["GET"]),
    ]
    if settings.web_ui:
        static_dir = Path(__file__).parent / "static"
        routes.append(Route("/", lambda request: FileResponse(static_dir / "index.html"), methods=["GET"]))
        routes.append(Mount("/static", StaticFiles(directory=static_dir), name="static"))
    # Host (DNS rebinding) and Content-Type (CSRF) checks, CORS only with --cors_origins, frame/nosniff headers.
    middleware = [Middleware(RequestGuard, bind_host=settings.bind_host, allowed_hosts=settings.allowed_hosts,
                             on_refused=server.metrics.request_done)]
    if settings.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                                     allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
                                     max_age=600))
    app = Starlette(routes=routes, lifespan=server.lifespan, middleware=middleware,
                    exception_handlers={HTTPException: server.http_error})
    app.state.server = server
    return app
