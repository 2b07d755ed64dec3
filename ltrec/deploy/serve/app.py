"""The HTTP side: routes, limits, errors as one-line JSON, and request metrics."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ltrec.deploy.bundle import Bundle, load_bundle
from ltrec.deploy.serve.batcher import Batcher, QueueFull, Recommender
from ltrec.deploy.serve.connections import STATE, Connections, Limits
from ltrec.deploy.serve.guard import RETRY_AFTER, Guard
from ltrec.deploy.serve.prometheus import CONTENT_TYPE, Metrics
from ltrec.deploy.serve.queries import MAX_BODY, MAX_USERS, BadRequest, Query, QueryReader
from ltrec.files.version import __version__


@dataclass(frozen=True)
class Settings:
    """An app's limits: the `ltrec serve` flags, which each --workers process gets through ENV."""

    max_batch: int = 64
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    max_connections: int = 4096
    api_key: str | None = None


ENV = "LTREC_SERVE"  # the settings each --workers process builds its app from
EXTRA_REQUESTS = 256  # requests in progress beyond --max-queue: bodies being read, popularity answers, errors
INFO = ("backbone", "n_items", "max_len", "k", "columns", "exclude_seen")  # no paths, metrics or versions


def create_app(bundle: Bundle, settings: Settings | None = None) -> Observe:
    s = settings or Settings()
    metrics = Metrics()
    recommender = Recommender(bundle)
    batcher = Batcher(recommender, metrics, s.max_batch, s.max_wait_ms / 1000, s.max_queue)
    reader = QueryReader(bundle, max_users=min(MAX_USERS, s.max_queue))  # a larger batch could never be admitted
    connections = Connections(Limits(s.header_timeout, s.body_timeout, s.max_connections))
    state = {"ready": False}
    info = {**bundle.meta.model_dump(include=set(INFO)), "ltrec": __version__}

    async def answer(queries: list[Query]) -> list[dict]:
        model = [q for q in queries if len(q.known)]
        try:
            got = iter(await batcher.submit(model) if model else [])
        except QueueFull:
            raise HTTPException(
                503,
                f"queue full ({s.max_queue:,} histories waiting or running); retry after {RETRY_AFTER}s",
                headers={"Retry-After": RETRY_AFTER},
            ) from None
        return [next(got) if len(q.known) else recommender.fallback(q) for q in queries]

    async def recommend(request: Request) -> Response:
        query = _checked(reader.one, await _body(request))
        return JSONResponse((await answer([query]))[0])

    async def recommend_batch(request: Request) -> Response:
        queries = _checked(reader.batch, await _body(request))
        return JSONResponse({"results": await answer(queries)})

    async def ready(request: Request) -> Response:
        if not state["ready"]:
            return JSONResponse(
                {"error": "not ready: the bundle is loading or the server is stopping"},
                503,
                headers={"Retry-After": RETRY_AFTER},
            )
        return JSONResponse({"status": "ready"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        await batcher.start()
        state["ready"] = True
        try:
            yield {STATE: connections}  # uvicorn hands this state to every connection's protocol
        finally:
            state["ready"] = False
            await batcher.stop()

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def show_info(request: Request) -> Response:
        return JSONResponse(info)

    async def show_metrics(request: Request) -> Response:
        return Response(metrics.render(batcher.pending, connections), media_type=CONTENT_TYPE)

    routes = [
        Route("/recommend", recommend, methods=["POST"]),
        Route("/recommend/batch", recommend_batch, methods=["POST"]),
        Route("/health", health),
        Route("/ready", ready),
        Route("/info", show_info),
        Route("/metrics", show_metrics),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error, Exception: _server_error}
    )
    guard = Guard(app, s.api_key, s.max_queue + EXTRA_REQUESTS, connections)
    return Observe(guard, metrics, {r.path for r in routes})


class Observe:
    """ASGI middleware: counts every HTTP answer by endpoint and status, with its latency. Paths outside the
    routes count as "other", so a scanner cannot grow the metrics without bound."""

    def __init__(self, app, metrics: Metrics, paths: set[str]):
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"] if scope["path"] in self.paths else "other"
            self.metrics.request(path, status[0], time.perf_counter() - start)


async def _body(request: Request) -> bytes:
    """The body, refused as soon as it passes MAX_BODY: never read further than that."""
    length = request.headers.get("content-length", "")
    if length and (not length.isdigit() or int(length) > MAX_BODY):
        raise HTTPException(413, f"body of {length[:20]} bytes, over the limit of {MAX_BODY:,}")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise HTTPException(413, f"body over the limit of {MAX_BODY:,} bytes")
    except ClientDisconnect:  # nobody to answer; 499 (nginx's "client closed request") only shows in /metrics
        raise HTTPException(499, "the client closed the connection before sending the whole body") from None
    return bytes(body)


def _checked(read, body: bytes):
    try:
        return read(body)
    except BadRequest as exc:
        raise HTTPException(exc.status, str(exc)) from None


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return JSONResponse({"error": exc.detail}, exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    # the details (which may name server paths) go to the server's log, where uvicorn writes the traceback
    return JSONResponse({"error": "internal error; the server log has the details"}, 500)


def from_env() -> Observe:
    """The app of one --workers process: each loads the bundle itself (an onnxruntime session per process)."""
    settings = json.loads(os.environ[ENV])
    bundle = load_bundle(Path(settings.pop("bundle")), settings.pop("threads"))
    return create_app(bundle, Settings(**settings))
