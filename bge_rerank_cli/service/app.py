"""The HTTP front end: each dialect's route parses its request, calls the :class:`Engine`, renders its
response. Around the routes: API-key check, body-size limit, metrics, one access-log line per request,
errors as JSON with ``X-Request-ID`` (never a traceback, whatever the input), and the shutdown deadline
(:class:`~bge_rerank_cli.service.server.Drain`)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..batcher import QueueFull
from ..errors import BgeRerankError, InputError, UsageError, debug_enabled
from ..inputs import parse_score_item
from ..outputs import score_record
from ..records import Pair
from . import schemas as s
from .core import Engine, NotReady, RequestTimeout, TooManyDocuments
from .metrics import Metrics
from .models import Models, UnknownModel
from .server import Drain
from .tracing import Tracing

T = TypeVar("T")
log = logging.getLogger("bge_rerank_cli")
ROUTES = (
    "/v2/rerank",
    "/v1/rerank",
    "/rerank",
    "/score",
    "/health",
    "/ready",
    "/info",
    "/v1/models",
    "/metrics",
    "/docs",
    "/openapi.json",
)
OPEN_ROUTES = ("/health", "/ready")  # probes carry no key; /ready then says nothing but its status


class ClientGone(Exception):
    pass


class ShuttingDown(Exception):
    """The drain time ran out while the request was still waiting."""


def error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer in the service's shape (:func:`schemas.error_body`)."""
    return JSONResponse(s.error_body(message, kind), status, headers=headers)


def create_app(
    served: Engine | Models,
    *,
    metrics: Metrics | None = None,
    api_key: str | None = None,
    cors_origins: tuple[str, ...] = (),
    log_format: str = "text",
    on_fatal: Callable[[BaseException], None] | None = None,
    drain: Drain | None = None,
    tracing: Tracing | None = None,
    replica: str | None = None,
) -> FastAPI:
    """The ASGI app for one model (an :class:`Engine`) or several (:class:`Models`, routed by each
    request's ``model``). The models load in a background thread at start-up, one after the other:
    ``/health`` answers at once, ``/ready`` once every model's warm-up pass is done; a load failure is
    handed to ``on_fatal``. When ``drain`` expires, requests still waiting answer 503 and the model work
    left is abandoned."""
    models = served if isinstance(served, Models) else Models.single(served)
    metrics = metrics or Metrics()
    drain = drain or Drain()
    for engine in models.engines.values():
        engine.observer = engine.observer or metrics.for_model(engine.model)
        engine.cache_observer = engine.cache_observer or metrics
        engine.tracing = engine.tracing or tracing

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        def load() -> None:
            for engine in models.engines.values():
                try:
                    engine.load()
                except BaseException as exc:
                    if on_fatal is not None:
                        on_fatal(exc)
                    return
                say_ready(engine, models.several)

        if not models.ready:  # (a Ray Serve replica loads its models before it starts the app)
            threading.Thread(target=load, name="bge-rerank-load", daemon=True).start()
        yield
        if drain.expired.is_set():
            print(f"bge-rerank serve: the drain time ({drain.seconds:g}s) ran out: requests still waiting were "
                  "answered 503; stopping the model worker.", file=sys.stderr, flush=True)  # fmt: skip
        else:
            print("bge-rerank serve: requests in flight finished; stopping the model worker.", file=sys.stderr,
                  flush=True)  # fmt: skip
        models.close(abandon=drain.expired.is_set())
        if tracing is not None:
            tracing.shutdown()  # the spans still buffered go out before the process ends

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
    app.add_middleware(Gate, metrics=metrics, api_key=api_key, max_body=models.first.limits.max_body_bytes,
                       access=AccessLog(log_format), cors=bool(cors_origins), tracing=tracing,
                       replica=replica)  # fmt: skip
    _handlers(app, metrics)
    _routes(app, models, metrics, drain, tracing, replica)
    return app


def say_ready(engine: Engine, several: bool) -> None:
    info = engine.describe()
    cache = engine.describe_cache()
    cached = f"; score cache {cache['where']}" if cache else ""
    which = f"{engine.model} " if several else ""
    print(f"bge-rerank serve: {which}ready ({info.get('backend')} {info.get('dtype')} on {info.get('device')}, "
          f"max length {info.get('max_length')}{cached})", file=sys.stderr, flush=True)  # fmt: skip
    if info.get("random_weights"):
        print(f"bge-rerank serve: stand-in model: {engine.config.model} has RANDOM weights (built by "
              "tools/random_model.py): its scores and orders are meaningless.", file=sys.stderr, flush=True)  # fmt: skip


def _state(engine: Engine) -> str:
    return "ready" if engine.ready else "failed" if engine.error is not None else "loading"


def _info(engine: Engine) -> dict[str, object]:
    """One served model's facts, as an operator asks for them (TEI's /info names where they apply)."""
    described = engine.describe()
    config, limits = engine.config, engine.limits
    scorer = engine.scorer
    return {
        **described,
        "id": engine.model,
        "model": config.model,
        "revision": config.revision,
        "status": _state(engine),
        "quantize": config.quantize,
        "max_input_length": described.get("max_length"),
        "max_batch_tokens": getattr(scorer, "batch_tokens", None),
        "max_client_batch_size": limits.max_docs,
        "max_queue_pairs": limits.max_queue,
        "long_docs": engine.options.long_docs,
        "score_cache": engine.describe_cache(),
    }


def _routes(
    app: FastAPI, models: Models, metrics: Metrics, drain: Drain, tracing: Tracing | None, replica: str | None
) -> None:
    def pick(name: str | None, documents: int) -> Engine:
        """The engine the request's ``model`` names; its span told which, and how many documents."""
        engine = models.pick(name)
        if tracing is not None:
            tracing.annotate(model=engine.model, documents=documents)
        return engine

    @app.get("/health", summary="Alive (answers while the models load and under full load)")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Every model loaded and warmed up")
    async def ready(request: Request) -> JSONResponse:
        first = models.first
        state = "ready" if models.ready else "failed" if models.error is not None else "loading"
        status = 200 if models.ready else 503
        if not request.state.authorized:  # a probe without the key learns the status alone
            return JSONResponse({"status": state}, status)
        body: dict[str, Any] = {
            "status": state,
            **(first.describe() if first.ready else {}),
            "model": first.model,
        }
        if models.several:
            body["models"] = {name: _state(e) for name, e in models.engines.items()}
        return JSONResponse(body, status)

    @app.get("/info", summary="What answers: per model, id, revision, backend, dtype, limits, score cache")
    async def info() -> JSONResponse:
        first = models.first
        if not first.ready:
            raise NotReady("the model is still loading; see GET /ready.")
        return JSONResponse({**first.describe(), "model": first.model, "revision": first.config.revision,
                             "score_cache": first.describe_cache(), "version": __version__,
                             "default_model": models.default, "aliases": models.aliases,
                             "models": [_info(e) for e in models.engines.values()],
                             **({"replica": {"id": replica, "pid": os.getpid()}} if replica else {})})  # fmt: skip

    started = int(time.time())

    @app.get("/v1/models", summary="The models served, as OpenAI-style clients and infinity list them")
    async def listed() -> dict[str, object]:
        data = [{"id": name, "object": "model", "owned_by": "bge-rerank", "created": started}
                for name in models.engines]  # fmt: skip
        return {"object": "list", "data": data}

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/v2/rerank", response_model=s.CohereRerankResponse, response_model_exclude_none=True,
              summary="Cohere v2 rerank")  # fmt: skip
    async def cohere(body: s.CohereRerankRequest, request: Request) -> s.CohereRerankResponse:
        texts = s.texts_of(body.documents)
        engine = pick(body.model, len(texts))
        ranking = await _guard(request, drain, engine.rank(body.query, texts, top_n=body.top_n,
                                                    doc_tokens=body.max_tokens_per_doc))  # fmt: skip
        _count(metrics, engine, ranking, len(texts))
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
        engine = pick(body.model, len(texts))
        ranking = await _guard(
            request, drain, engine.rank(body.query, texts, top_n=body.top_n or None, usage=True)
        )
        _count(metrics, engine, ranking, len(texts))
        results = [
            s.JinaResult(index=d.index, relevance_score=d.score,
                         document=s.JinaDocument(text=d.text) if body.return_documents else None)
            for d in ranking.ranked
        ]  # fmt: skip
        return s.JinaRerankResponse(model=body.model or engine.model, usage=s.JinaUsage(prompt_tokens=ranking.tokens, total_tokens=ranking.tokens),
                                    results=results)  # fmt: skip

    @app.post("/rerank", response_model=list[s.TeiRank], response_model_exclude_none=True,
              summary="Hugging Face TEI rerank (the default model, unless `model` names another)")  # fmt: skip
    async def tei(body: s.TeiRerankRequest, request: Request) -> list[s.TeiRank]:
        engine = pick(body.model, len(body.texts))
        ranking = await _guard(request, drain, engine.rank(body.query, body.texts))
        _count(metrics, engine, ranking, len(body.texts))
        return [
            s.TeiRank(index=d.index, score=d.logit if body.raw_scores else d.score,
                      text=d.text if body.return_text else None)
            for d in ranking.ranked
        ]  # fmt: skip

    @app.post("/score", response_model=s.ScoreResponse,
              summary="Pair scores, as `bge-rerank score` writes them (the default model, unless `model` names another)")  # fmt: skip
    async def score(body: s.ScoreRequest, request: Request) -> s.ScoreResponse:
        engine = pick(body.model, len(body.pairs))
        if len(body.pairs) > engine.limits.max_docs:
            raise TooManyDocuments(len(body.pairs), engine.limits.max_docs)
        items = [parse_score_item(obj, i, "pairs") for i, obj in enumerate(body.pairs)]
        pairs = [Pair(i.query, i.passage) for i in items]
        result = await _guard(request, drain, engine.score(pairs, usage=True))
        scored, tokens = result.scored, result.tokens
        metrics.scored(engine.model, len(set(pairs)), result.model_tokens, sum(x.truncated for x in scored))
        records = [score_record(item, x) for item, x in zip(items, scored, strict=True)]
        return s.ScoreResponse(
            model=engine.model, results=records, usage=s.JinaUsage(prompt_tokens=tokens, total_tokens=tokens)
        )


def _count(metrics: Metrics, engine: Engine, ranking: Any, documents: int) -> None:
    metrics.scored(engine.model, documents, ranking.model_tokens, ranking.truncated)
    if documents:
        metrics.reranked(engine.model, ranking.top1_replaced)


async def _guard(request: Request, drain: Drain, work: Awaitable[T]) -> T:
    """Run ``work`` unless the client goes away or the drain time runs out first; then it is cancelled
    (dropped from the queue, or its round stopped before the next forward pass)."""
    task = asyncio.ensure_future(work)
    watchers = {asyncio.ensure_future(_client_gone(request)), asyncio.ensure_future(drain.expired.wait())}
    try:
        done, _ = await asyncio.wait({task, *watchers}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for watcher in watchers:
            watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise ShuttingDown if drain.expired.is_set() else ClientGone


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

    @app.exception_handler(UnknownModel)
    async def unknown_model(request: Request, exc: UnknownModel) -> JSONResponse:
        metrics.rejected.labels("unknown_model").inc()
        return error(404, str(exc), "NotFound")

    @app.exception_handler(TooManyDocuments)
    async def too_many(request: Request, exc: TooManyDocuments) -> JSONResponse:
        metrics.rejected.labels("too_many_documents").inc()
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

    @app.exception_handler(ShuttingDown)
    async def shutting_down(request: Request, exc: ShuttingDown) -> JSONResponse:
        metrics.rejected.labels("shutdown").inc()
        message = "the service is shutting down and its drain time ran out; send the request again."
        return error(503, message, "Unhealthy", {"Retry-After": "1", "Connection": "close"})

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


# An incoming X-Request-ID is kept when it is a plain token (what load balancers and tracing proxies send:
# UUIDs, hex, dotted or dashed ids); anything else is replaced, so a header cannot inject into the log.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")
# What the text access log writes as \xNN / \uNNNN: control and other non-printable or non-ASCII
# characters, and the quote and backslash that delimit its fields, so a request cannot forge a line.
_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')


def log_safe(text: str) -> str:
    """``text`` with every character that could break or forge an access-log line escaped."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii") if m.group() not in '"\\'
                       else "\\" + m.group(), text)  # fmt: skip


def _bearer(header: bytes) -> bytes | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (the scheme in any case, RFC 7235)."""
    scheme, _, token = header.strip().partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" and token.strip() else None


class Gate:
    """ASGI middleware, outermost: API key, body-size limit (the whole body is read here, chunked or not,
    before the app sees it), request metrics, X-Request-ID, one access-log line per request, and the last
    word on errors: an exception that escapes the app, or an error answer that is not JSON (from a
    middleware), becomes the service's JSON error shape; nothing reaches the server as a traceback."""

    def __init__(
        self, app: Any, *, metrics: Metrics, api_key: str | None, max_body: int, access: AccessLog, cors: bool,
        tracing: Tracing | None = None, replica: str | None = None,
    ) -> None:  # fmt: skip
        self.app = app
        self.tracing = tracing
        self.replica = replica
        self.metrics = metrics
        self.key = api_key.encode() if api_key else None
        self.max_body = max_body
        self.access = access
        self.cors = cors

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"")
        rid = incoming.decode() if _REQUEST_ID.fullmatch(incoming) else str(uuid.uuid4())
        authorized = self._authorized(headers)
        scope.setdefault("state", {}).update(request_id=rid, authorized=authorized)
        sending = _Replier(send, rid, self.replica)
        method = scope.get("method", "-")
        span = self.tracing.start_request(method, route, path, headers, rid) if self.tracing else None
        try:
            if not authorized and path not in OPEN_ROUTES and not self._preflight(scope, headers):
                # Its body is not read: the connection closes after the answer, so none is left on it.
                refusal = error(
                    401, "unauthorized", "Unauthorized", {"WWW-Authenticate": "Bearer", "Connection": "close"}
                )
                await refusal(scope, receive, sending)
                return
            body = await self._body(scope, headers, receive, sending)
            if body is None:
                return
            await self.app(scope, _replay(body, receive), sending)
        except Exception as exc:  # a bug below: one log line (a traceback with BGE_RERANK_DEBUG=1), JSON 500
            log.error("unexpected %s on %s: %s", type(exc).__name__, log_safe(path), exc,
                      exc_info=debug_enabled())  # fmt: skip
            if not sending.started:
                await error(500, "internal error (see the service log)", "Backend")(scope, receive, sending)
        finally:
            seconds = time.perf_counter() - started
            # Answered below the app (a deadline's 408), or not at all: the client left first (499).
            status = scope["state"].get("answered") or (sending.status if sending.started else 499)
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(seconds)
            self._access(scope, status, seconds, rid)
            if span is not None and self.tracing is not None:
                self.tracing.end_request(span, status)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        if self.key is None:
            return True
        token = _bearer(headers.get(b"authorization", b""))
        return token is not None and hmac.compare_digest(token, self.key)

    def _preflight(self, scope: dict[str, Any], headers: dict[bytes, bytes]) -> bool:
        """A CORS preflight (browsers send it without credentials); the CORS middleware answers it."""
        return (self.cors and scope.get("method") == "OPTIONS" and b"origin" in headers
                and b"access-control-request-method" in headers)  # fmt: skip

    async def _body(
        self, scope: dict[str, Any], headers: dict[bytes, bytes], receive: Any, send: Any
    ) -> bytes | None:
        """The whole request body, or ``None`` once it was answered (413) or the client left."""
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            await self._too_large(scope, receive, send, f"request body of {int(length)} bytes")
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self._too_large(
                    scope, receive, send, f"request body of more than {self.max_body} bytes"
                )
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, scope: dict[str, Any], receive: Any, send: Any, what: str) -> None:
        self.metrics.rejected.labels("body_too_large").inc()
        message = f"{what}; the limit is {self.max_body} (--max-body-bytes)."
        await error(413, message, "Validation", {"Connection": "close"})(scope, receive, send)

    def _access(self, scope: dict[str, Any], status: int, seconds: float, rid: str) -> None:
        client = (scope.get("client") or ("-", 0))[0]
        self.access.write(client, scope.get("method", "-"), scope.get("path", "-"), status, seconds, rid)


@dataclass(frozen=True)
class AccessLog:
    """One line per request on stderr: text (``client "METHOD path" status 1.0ms id``, with whatever could
    break or forge a line escaped) or JSON. Never a body or a document text."""

    format: str = "text"

    def write(self, client: str, method: str, path: str, status: int, seconds: float, rid: str) -> None:
        if self.format == "json":
            line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "client": client, "method": method,
                               "path": path, "status": status, "ms": round(seconds * 1000, 1),
                               "request_id": rid})  # fmt: skip
        else:
            line = f'{client} "{log_safe(method)} {log_safe(path)}" {status} {seconds * 1000:.1f}ms {rid}'
        print(line, file=sys.stderr, flush=True)


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that gives the app the body read by the gate, then waits on the client (for its
    disconnect)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        message: dict[str, Any] = await receive()
        return message

    return replay


class _Replier:
    """The gate's ``send``: adds X-Request-ID, records the status, and turns an error answer that is not
    JSON (a middleware's plain-text 400, say) into the service's JSON error shape."""

    def __init__(self, send: Any, rid: str, replica: str | None = None) -> None:
        self.send = send
        self.rid = rid
        self.extra = [(b"x-bge-rerank-replica", replica.encode())] if replica else []
        self.status = 500  # the status sent (500 until a response starts)
        self.started = False
        self._held: dict[str, Any] | None = None
        self._text = b""

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
            message = {**message, "headers": [*headers, (b"x-request-id", self.rid.encode()), *self.extra]}
            content_type = dict((k.lower(), v) for k, v in headers).get(b"content-type", b"")
            if message["status"] >= 400 and not content_type.startswith(b"application/json"):
                self._held = message  # rewritten once its body is in
                return
        elif message["type"] == "http.response.body" and self._held is not None:
            self._text += message.get("body", b"")
            if message.get("more_body", False):
                return
            await self._rewrite()
            return
        await self.send(message)

    async def _rewrite(self) -> None:
        assert self._held is not None
        text = self._text.decode("utf-8", "replace").strip()[:500] or "error"
        kept = [(k, v) for k, v in self._held["headers"]
                if k.lower() not in (b"content-type", b"content-length")]  # fmt: skip
        body = json.dumps(s.error_body(text, "Http")).encode()
        headers = [
            *kept,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await self.send({**self._held, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})
