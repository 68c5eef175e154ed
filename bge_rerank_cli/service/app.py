"""The HTTP front end: each dialect's route parses its request, calls the :class:`Engine`, renders its
response. Around the routes: API-key check, body-size limit, metrics, one access-log line per request,
errors as JSON (never a traceback)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..batcher import QueueFull
from ..errors import BgeRerankError, InputError, UsageError
from ..inputs import parse_score_item
from ..outputs import score_record
from ..records import Pair
from . import schemas as s
from .core import Engine, NotReady, RequestTimeout, TooManyDocuments
from .metrics import Metrics

T = TypeVar("T")
log = logging.getLogger("bge_rerank_cli")
ROUTES = (
    "/v2/rerank",
    "/v1/rerank",
    "/rerank",
    "/score",
    "/health",
    "/ready",
    "/metrics",
    "/docs",
    "/openapi.json",
)
OPEN_ROUTES = ("/health",)


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


def error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Errors in a shape every dialect's client can show: TEI's ``error`` and ``error_type`` (Validation,
    Overloaded, Unhealthy, Backend, ...), Cohere's ``message``, and ``detail``, which the Jina clients read."""
    body = {"error": message, "error_type": kind, "message": message, "detail": message}
    return JSONResponse(body, status, headers=headers)


def create_app(
    engine: Engine,
    *,
    metrics: Metrics | None = None,
    api_key: str | None = None,
    cors_origins: tuple[str, ...] = (),
    log_format: str = "text",
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The ASGI app. The model loads in a background thread at start-up: ``/health`` answers at once,
    ``/ready`` once a warm-up pass is done; a load failure is handed to ``on_fatal``."""
    metrics = metrics or Metrics()
    engine.observer = engine.observer or metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        def load() -> None:
            try:
                engine.load()
            except BaseException as exc:
                if on_fatal is not None:
                    on_fatal(exc)
                return
            info = engine.describe()
            print(f"bge-rerank serve: ready ({info.get('backend')} {info.get('dtype')} on {info.get('device')}, "
                  f"max length {info.get('max_length')})", file=sys.stderr, flush=True)  # fmt: skip
            if info.get("random_weights"):
                print(f"bge-rerank serve: stand-in model: {engine.model} has RANDOM weights (built by "
                      "tools/random_model.py): its scores and orders are meaningless.", file=sys.stderr, flush=True)  # fmt: skip

        threading.Thread(target=load, name="bge-rerank-load", daemon=True).start()
        yield
        print(
            "bge-rerank serve: requests in flight finished; stopping the model worker.",
            file=sys.stderr,
            flush=True,
        )
        engine.close()

    app = FastAPI(
        title="bge-rerank",
        version=__version__,
        description="Rerank with a cross-encoder: Cohere v2, Jina/vLLM and TEI rerank APIs, and pair scores.",
        lifespan=lifespan,
    )
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(
        Gate, metrics=metrics, api_key=api_key, max_body=engine.limits.max_body_bytes, log_format=log_format
    )
    _handlers(app, metrics)
    _routes(app, engine, metrics)
    return app


def _routes(app: FastAPI, engine: Engine, metrics: Metrics) -> None:
    @app.get("/health", summary="Alive (answers while the model loads and under full load)")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Model loaded and warmed up")
    async def ready() -> JSONResponse:
        if engine.ready:
            return JSONResponse({"status": "ready", "model": engine.model, **engine.describe()})
        state = "failed" if engine.error is not None else "loading"
        return JSONResponse({"status": state, "model": engine.model}, 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/v2/rerank", response_model=s.CohereRerankResponse, response_model_exclude_none=True,
              summary="Cohere v2 rerank")  # fmt: skip
    async def cohere(body: s.CohereRerankRequest, request: Request) -> s.CohereRerankResponse:
        texts = s.texts_of(body.documents)
        ranking = await _guard(request, engine.rank(body.query, texts, top_n=body.top_n,
                                                    doc_tokens=body.max_tokens_per_doc))  # fmt: skip
        _count(metrics, ranking, len(texts))
        results = [
            s.CohereResult(index=d.index, relevance_score=d.score,
                           document=s.CohereDocument(text=d.text) if body.return_documents else None)
            for d in ranking.ranked
        ]  # fmt: skip
        units = max(1, math.ceil(len(texts) / 100))
        meta = s.CohereMeta(billed_units=s.CohereBilledUnits(search_units=units))
        return s.CohereRerankResponse(id=request.state.request_id, results=results, meta=meta)  # set by Gate

    @app.post("/v1/rerank", response_model=s.JinaRerankResponse, response_model_exclude_none=True,
              summary="Jina / vLLM rerank")  # fmt: skip
    async def jina(body: s.JinaRerankRequest, request: Request) -> s.JinaRerankResponse:
        texts = s.texts_of(body.documents)
        ranking = await _guard(request, engine.rank(body.query, texts, top_n=body.top_n or None))
        _count(metrics, ranking, len(texts))
        results = [
            s.JinaResult(index=d.index, relevance_score=d.score,
                         document=s.JinaDocument(text=d.text) if body.return_documents else None)
            for d in ranking.ranked
        ]  # fmt: skip
        return s.JinaRerankResponse(model=body.model or engine.model, usage=s.JinaUsage(prompt_tokens=ranking.tokens, total_tokens=ranking.tokens),
                                    results=results)  # fmt: skip

    @app.post("/rerank", response_model=list[s.TeiRank], response_model_exclude_none=True,
              summary="Hugging Face TEI rerank")  # fmt: skip
    async def tei(body: s.TeiRerankRequest, request: Request) -> list[s.TeiRank]:
        ranking = await _guard(request, engine.rank(body.query, body.texts))
        _count(metrics, ranking, len(body.texts))
        return [
            s.TeiRank(index=d.index, score=d.logit if body.raw_scores else d.score,
                      text=d.text if body.return_text else None)
            for d in ranking.ranked
        ]  # fmt: skip

    @app.post(
        "/score", response_model=s.ScoreResponse, summary="Pair scores, as `bge-rerank score` writes them"
    )
    async def score(body: s.ScoreRequest, request: Request) -> s.ScoreResponse:
        if len(body.pairs) > engine.limits.max_docs:
            raise TooManyDocuments(len(body.pairs), engine.limits.max_docs)
        items = [parse_score_item(obj, i, "pairs") for i, obj in enumerate(body.pairs)]
        scored, tokens = await _guard(request, engine.score([Pair(i.query, i.passage) for i in items]))
        metrics.scored(len(set(item.pair for item in items)), tokens, sum(x.truncated for x in scored))
        records = [score_record(item, x) for item, x in zip(items, scored, strict=True)]
        return s.ScoreResponse(
            model=engine.model, results=records, usage=s.JinaUsage(prompt_tokens=tokens, total_tokens=tokens)
        )


def _count(metrics: Metrics, ranking: Any, documents: int) -> None:
    metrics.scored(documents, ranking.tokens, ranking.truncated)
    if documents:
        metrics.reranked(ranking.top1_replaced)


async def _guard(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` unless the client goes away first; then it is cancelled (and dropped from the queue)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise ClientGone


async def _client_gone(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return error(400, "malformed JSON: the request body must be one JSON object.", "Validation")
        if any(p.get("loc") == ("body",) for p in problems):
            return error(400, "the request body must be a JSON object.", "Validation")
        message = "; ".join(f"{_field(tuple(p.get('loc', ())))}: {p.get('msg')}" for p in problems[:5])
        return error(422, message, "Validation")

    @app.exception_handler(InputError)
    async def bad_pair(request: Request, exc: InputError) -> JSONResponse:
        return error(422, f"{exc.source}[{exc.line}]: {exc.reason}", "Validation")

    @app.exception_handler(TooManyDocuments)
    async def too_many(request: Request, exc: TooManyDocuments) -> JSONResponse:
        metrics.rejected.labels("too_many_documents").inc()
        return error(413, str(exc), "Validation")

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        metrics.rejected.labels("body_too_large").inc()
        return error(413, str(exc), "Validation")

    @app.exception_handler(QueueFull)
    async def overloaded(request: Request, exc: QueueFull) -> JSONResponse:
        metrics.rejected.labels("queue_full").inc()
        return error(429, str(exc), "Overloaded", {"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestTimeout)
    async def timed_out(request: Request, exc: RequestTimeout) -> JSONResponse:
        metrics.rejected.labels("timeout").inc()
        return error(503, str(exc), "Overloaded", {"Retry-After": "1"})

    @app.exception_handler(NotReady)
    async def loading(request: Request, exc: NotReady) -> JSONResponse:
        return error(503, str(exc), "Unhealthy", {"Retry-After": "5"})

    @app.exception_handler(UsageError)
    async def usage(request: Request, exc: UsageError) -> JSONResponse:
        return error(422, str(exc), "Validation")

    @app.exception_handler(ClientGone)
    async def gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)

    @app.exception_handler(StarletteHTTPException)
    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "not found" if exc.status_code == 404 else str(exc.detail)
        return error(exc.status_code, message, "Http", getattr(exc, "headers", None))

    @app.exception_handler(BgeRerankError)
    async def domain(request: Request, exc: BgeRerankError) -> JSONResponse:
        log.error("%s: %s", type(exc).__name__, exc)
        return error(500, str(exc), "Backend")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s on %s: %s", type(exc).__name__, request.url.path, exc)
        return error(500, "internal error (see the service log)", "Backend")


# An incoming X-Request-ID is kept when it is a plain token (what load balancers and tracing proxies send:
# UUIDs, hex, dotted or dashed ids); anything else is replaced, so a header cannot inject into the log.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


class Gate:
    """ASGI middleware: API key, body-size limit, request metrics, X-Request-ID, one access-log line per
    request."""

    def __init__(
        self, app: Any, *, metrics: Metrics, api_key: str | None, max_body: int, log_format: str
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.key = f"Bearer {api_key}".encode() if api_key else None
        self.max_body = max_body
        self.log_format = log_format

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        status = {"code": 500}
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"")
        rid = incoming.decode() if _REQUEST_ID.fullmatch(incoming) else str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = rid

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())],
                }
            await send(message)

        try:
            if (
                self.key is not None
                and path not in OPEN_ROUTES
                and not hmac.compare_digest(headers.get(b"authorization", b""), self.key)
            ):
                await error(401, "unauthorized", "Unauthorized", {"WWW-Authenticate": "Bearer"})(
                    scope, receive, sending
                )
                return
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_body:
                self.metrics.rejected.labels("body_too_large").inc()
                await error(413, f"request body of {int(length)} bytes; the limit is {self.max_body}.",
                            "Validation")(scope, receive, sending)  # fmt: skip
                return
            await self.app(scope, self._limited(receive), sending)
        finally:
            seconds = time.perf_counter() - started
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(seconds)
            self._access(scope, status["code"], seconds, rid)

    def _limited(self, receive: Any) -> Any:
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(f"request body over {self.max_body} bytes.")
            return message

        return limited

    def _access(self, scope: dict[str, Any], status: int, seconds: float, rid: str) -> None:
        client = (scope.get("client") or ("-", 0))[0]
        method, path = scope.get("method", "-"), scope.get("path", "-")
        if self.log_format == "json":
            line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "client": client, "method": method,
                               "path": path, "status": status, "ms": round(seconds * 1000, 1),
                               "request_id": rid})  # fmt: skip
        else:
            line = f'{client} "{method} {path}" {status} {seconds * 1000:.1f}ms {rid}'
        print(line, file=sys.stderr, flush=True)
