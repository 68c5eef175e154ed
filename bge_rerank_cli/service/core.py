"""The service's engine: a loaded scorer behind the cross-request :class:`Batcher`, used asynchronously.

No web framework here: the HTTP routes (``app.py``) parse a dialect's request, call :meth:`Engine.rank`
or :meth:`Engine.score`, and render the dialect's response. Scores come from the same tokenisation,
batching and model as `bge-rerank score`, so they are equal to the batch tool's. With a score cache
(``serve --score-cache``), the pairs it holds are answered from it and only the others go to the model.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..backends import Encoded, Scorer, load_scorer
from ..batcher import Admission, Batcher, Observer
from ..config import LoaderConfig, ScoreOptions
from ..engine import encode_pairs, rank_documents, reduce_windows
from ..errors import BgeRerankError, UsageError
from ..records import Document, Pair, RankedDocument, Scored
from .cache import CacheObserver, ServiceCache

if TYPE_CHECKING:
    from ..score_cache import CacheStore
    from .tracing import Tracing


class RequestTimeout(BgeRerankError):
    """The request's pairs were not scored within the per-request timeout."""


class NotReady(BgeRerankError):
    """The model is still loading (or failed to load)."""


@dataclass(frozen=True)
class Limits:
    """Per-request and queue bounds. ``max_queue`` counts pairs admitted and waiting for the model worker
    (being tokenised or queued); pairs the score cache answers never wait for it and are not counted."""

    max_docs: int = 1000
    max_body_bytes: int = 10 * 2**20
    max_queue: int = 10_000
    timeout_seconds: float = 60.0
    gather_seconds: float = 0.005


@dataclass(frozen=True)
class Scoring:
    """A request's scores, in its order. ``tokens``: the real tokens of its distinct pairs, as a response's
    usage reports them (with ``usage``, those the score cache answered are tokenised for the count, so a
    response is the same with and without the cache); ``model_tokens``: those the model read for it."""

    scored: list[Scored]
    tokens: int
    model_tokens: int


@dataclass(frozen=True)
class Ranking:
    """A scored candidate list: ``ranked`` best first (cut by ``top_n``), ``tokens`` the real tokens of
    its pairs (see :class:`Scoring`), ``top1_replaced`` whether the best document was not the first one
    given, ``truncated`` how many documents lost tokens, ``model_tokens`` the tokens the model read."""

    ranked: tuple[RankedDocument, ...]
    tokens: int
    top1_replaced: bool
    truncated: int = 0
    model_tokens: int = 0


@dataclass
class _Found:
    """What scoring a request's distinct pairs gave: each pair's record, the pairs the model scored
    (``fresh``, for the score cache to remember), and the usage and model tokens (see :class:`Scoring`)."""

    by_pair: dict[Pair, Scored]
    fresh: list[Pair]
    tokens: int
    model_tokens: int


@dataclass
class Engine:
    config: LoaderConfig
    options: ScoreOptions = field(default_factory=ScoreOptions)
    limits: Limits = field(default_factory=Limits)
    observer: Observer | None = None
    scorer: Scorer | None = None
    batcher: Batcher | None = None
    error: BaseException | None = None
    score_cache: CacheStore | None = None  # the store --score-cache names; bound to the scorer at load
    score_cache_retry: float = 30.0  # seconds before a failed store is tried again
    cache_observer: CacheObserver | None = None
    cache: ServiceCache | None = None
    name: str = ""  # what requests call it (--model NAME=ID); the model id when not named
    tracing: Tracing | None = None  # OpenTelemetry spans (serve --otlp-endpoint); None: off
    _ready: threading.Event = field(default_factory=threading.Event)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def model(self) -> str:
        """The name this engine's model is served under (its id when it was not named)."""
        return self.name or self.config.model

    def load(self, loader: Callable[[LoaderConfig], Scorer] = load_scorer) -> None:
        """Load the model, start the worker and run a warm-up pass; then :attr:`ready` turns true."""
        try:
            self.scorer = loader(self.config)
            self.batcher = Batcher(
                self.scorer,
                gather_seconds=self.limits.gather_seconds,
                max_pending=self.limits.max_queue,
                observer=self.observer,
                tracer=self.tracing,
            )
            warm = encode_pairs(self.scorer, [Pair("warm-up query", "warm-up passage")], self.options)
            self.batcher.submit([s for w in warm for s in w]).future.result()
            self.batcher.forget_timing()  # one warm-up pair says little about the service rate
            if self.score_cache is not None:
                from ..jobs.settings import bind_cache

                self.cache = ServiceCache(
                    bind_cache(
                        self.score_cache, self.scorer, self.options, retry_after=self.score_cache_retry
                    ),
                    self.cache_observer,
                    label=self.model,
                )
        except BaseException as exc:
            self.error = exc
            raise
        self._ready.set()

    def describe(self) -> dict[str, object]:
        """The loaded scorer's facts (backend, device, dtype, effective max length, random weights)."""
        return {} if self.scorer is None else self.scorer.describe()

    def describe_cache(self) -> dict[str, object] | None:
        """Whether a score cache is on: where (no secrets) and whether it still works; ``None`` when off."""
        return None if self.cache is None else self.cache.describe()

    def close(self, *, abandon: bool = False) -> None:
        """Stop the model worker: after what is queued, or (``abandon``) dropping it and stopping the round
        in flight before its next forward pass; then close the score cache."""
        if self.batcher is not None:
            self.batcher.close(timeout=1 if abandon else 30, abandon=abandon)
        if self.cache is not None:
            self.cache.close()

    async def score(
        self, pairs: Sequence[Pair], *, doc_tokens: int | None = None, usage: bool = False
    ) -> Scoring:
        """Scores of ``pairs`` in order (identical pairs scored once) and the tokens they took.

        With a score cache, the distinct pairs are looked up first (in the cache's thread) and only the
        misses go on. Admission comes next: the pairs for the model are counted against the queue bound
        before any tokenising (:class:`QueueFull` costs nothing but the lookup); a request the cache
        answers whole never waits for the model and is never refused. ``--timeout`` covers everything
        from the lookup on, tokenising included. What the model scored is remembered after the answer,
        in order: a request made after it finds it.
        ``doc_tokens`` cuts each passage to that many tokens first (Cohere's ``max_tokens_per_doc``);
        ``usage``: count the tokens of the pairs the cache answered too (:attr:`Scoring.tokens`).
        """
        scorer, batcher = self._started()
        if doc_tokens is not None and doc_tokens < 1:
            raise UsageError("max_tokens_per_doc must be at least 1.")
        unique = list(dict.fromkeys(pairs))
        try:
            found = await asyncio.wait_for(
                self._score_unique(scorer, batcher, unique, doc_tokens, usage), self.limits.timeout_seconds
            )
        except asyncio.TimeoutError:
            raise RequestTimeout(
                f"not scored within {self.limits.timeout_seconds:g}s; the service is overloaded."
            ) from None
        if self.cache is not None and found.fresh:
            self.cache.remember_later(found.fresh, [found.by_pair[p] for p in found.fresh], doc_tokens)
        scored = [found.by_pair[p] for p in pairs]
        return Scoring(scored, found.tokens, found.model_tokens)

    async def _score_unique(
        self, scorer: Scorer, batcher: Batcher, unique: list[Pair], doc_tokens: int | None, usage: bool
    ) -> _Found:
        by_pair: dict[Pair, Scored] = {}
        if self.cache is not None:
            with self._span("score cache lookup", pairs=len(unique)):
                known = await self.cache.lookup_async(unique, doc_tokens)
            by_pair = {p: hit for p, hit in zip(unique, known, strict=True) if hit is not None}
        missing = [p for p in unique if p not in by_pair] if by_pair else unique
        hits = [p for p in unique if p in by_pair] if usage else []
        scored: list[Scored] = []
        model_tokens = hit_tokens = 0
        if missing:
            admission = batcher.admit(len(missing))
            try:
                scored, model_tokens, hit_tokens = await self._score_admitted(
                    scorer, batcher, admission, missing, hits, doc_tokens
                )
            finally:
                batcher.release(admission)  # a no-op once submitted
        elif hits:
            hit_tokens = await asyncio.to_thread(self._tokens, scorer, hits, doc_tokens)
        by_pair.update(zip(missing, scored, strict=True))
        return _Found(by_pair, missing, model_tokens + hit_tokens, model_tokens)

    async def _score_admitted(
        self,
        scorer: Scorer,
        batcher: Batcher,
        admission: Admission,
        missing: list[Pair],
        hits: list[Pair],
        doc_tokens: int | None,
    ) -> tuple[list[Scored], int, int]:
        """The misses' records and tokens, and the tokens of ``hits`` (counted while the model works)."""
        with self._span("tokenize", pairs=len(missing)):
            windows = await asyncio.to_thread(self._encode, scorer, missing, doc_tokens)
        flat = [seq for per_pair in windows for seq in per_pair]
        ticket = batcher.submit(flat, admission, trace=self.tracing.current() if self.tracing else None)
        try:
            hit_tokens = await asyncio.to_thread(self._tokens, scorer, hits, doc_tokens) if hits else 0
            logits = await asyncio.wrap_future(ticket.future)
        finally:
            if not ticket.future.done():  # timed out, client gone or shutting down: stop paying for it
                ticket.abandon()
        scored = reduce_windows(windows, logits, chunked=self.options.long_docs == "chunk")
        return scored, sum(len(seq.ids) for seq in flat), hit_tokens

    def _span(self, name: str, **attributes: object) -> AbstractContextManager[None]:
        return self.tracing.span(name, **attributes) if self.tracing is not None else nullcontext()

    def _encode(self, scorer: Scorer, pairs: list[Pair], doc_tokens: int | None) -> list[list[Encoded]]:
        """The sequences the model reads for ``pairs`` (blocking: run in a worker thread)."""
        if doc_tokens is not None:
            clip = getattr(scorer, "clip", None)
            if clip is None:
                raise UsageError("this model's scorer cannot cut documents to a token count.")
            clipped = clip([p.passage for p in pairs], doc_tokens)
            pairs = [Pair(p.query, text) for p, (text, _) in zip(pairs, clipped, strict=True)]
        return encode_pairs(scorer, pairs, self.options)

    def _tokens(self, scorer: Scorer, pairs: list[Pair], doc_tokens: int | None) -> int:
        return sum(len(seq.ids) for per_pair in self._encode(scorer, pairs, doc_tokens) for seq in per_pair)

    async def rank(
        self,
        query: str,
        texts: Sequence[str],
        *,
        top_n: int | None = None,
        doc_tokens: int | None = None,
        usage: bool = False,
    ) -> Ranking:
        """``texts`` scored against ``query`` and sorted best first (ties keep input order)."""
        if len(texts) > self.limits.max_docs:
            raise TooManyDocuments(len(texts), self.limits.max_docs)
        if not texts:
            return Ranking((), 0, False)
        result = await self.score([Pair(query, t) for t in texts], doc_tokens=doc_tokens, usage=usage)
        scored = result.scored
        documents = [Document(i, t) for i, t in enumerate(texts)]
        ranked = rank_documents(documents, scored, top_k=top_n)
        best = max(range(len(scored)), key=lambda i: (scored[i].logit, -i))
        return Ranking(
            ranked, result.tokens, best != 0, sum(s.truncated for s in scored), result.model_tokens
        )

    def _started(self) -> tuple[Scorer, Batcher]:
        if self.scorer is None or self.batcher is None or not self.ready:
            raise NotReady("the model is still loading; see GET /ready.")
        return self.scorer, self.batcher


class TooManyDocuments(UsageError):
    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} documents in one request; the limit is {limit}.")
