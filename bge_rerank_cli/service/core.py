"""The service's engine: a loaded scorer behind the cross-request :class:`Batcher`, used asynchronously.

No web framework here: the HTTP routes (``app.py``) parse a dialect's request, call :meth:`Engine.rank`
or :meth:`Engine.score`, and render the dialect's response. Scores come from the same tokenisation,
batching and model as `bge-rerank score`, so they are equal to the batch tool's.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..backends import Scorer, load_scorer
from ..batcher import Admission, Batcher, Observer
from ..config import LoaderConfig, ScoreOptions
from ..engine import encode_pairs, rank_documents, reduce_windows
from ..errors import BgeRerankError, UsageError
from ..records import Document, Pair, RankedDocument, Scored


class RequestTimeout(BgeRerankError):
    """The request's pairs were not scored within the per-request timeout."""


class NotReady(BgeRerankError):
    """The model is still loading (or failed to load)."""


@dataclass(frozen=True)
class Limits:
    """Per-request and queue bounds. ``max_queue`` counts pairs admitted and waiting for the model worker
    (being tokenised or queued)."""

    max_docs: int = 1000
    max_body_bytes: int = 10 * 2**20
    max_queue: int = 10_000
    timeout_seconds: float = 60.0
    gather_seconds: float = 0.005


@dataclass(frozen=True)
class Ranking:
    """A scored candidate list: ``ranked`` best first (cut by ``top_n``), ``tokens`` the real tokens
    the model read, ``top1_replaced`` whether the best document was not the first one given,
    ``truncated`` how many documents lost tokens."""

    ranked: tuple[RankedDocument, ...]
    tokens: int
    top1_replaced: bool
    truncated: int = 0


@dataclass
class Engine:
    config: LoaderConfig
    options: ScoreOptions = field(default_factory=ScoreOptions)
    limits: Limits = field(default_factory=Limits)
    observer: Observer | None = None
    scorer: Scorer | None = None
    batcher: Batcher | None = None
    error: BaseException | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def model(self) -> str:
        return self.config.model

    def load(self, loader: Callable[[LoaderConfig], Scorer] = load_scorer) -> None:
        """Load the model, start the worker and run a warm-up pass; then :attr:`ready` turns true."""
        try:
            self.scorer = loader(self.config)
            self.batcher = Batcher(
                self.scorer,
                gather_seconds=self.limits.gather_seconds,
                max_pending=self.limits.max_queue,
                observer=self.observer,
            )
            warm = encode_pairs(self.scorer, [Pair("warm-up query", "warm-up passage")], self.options)
            self.batcher.submit([s for w in warm for s in w]).future.result()
            self.batcher.forget_timing()  # one warm-up pair says little about the service rate
        except BaseException as exc:
            self.error = exc
            raise
        self._ready.set()

    def describe(self) -> dict[str, object]:
        """The loaded scorer's facts (backend, device, dtype, effective max length, random weights)."""
        return {} if self.scorer is None else self.scorer.describe()

    def close(self, *, abandon: bool = False) -> None:
        """Stop the model worker: after what is queued, or (``abandon``) dropping it and stopping the round
        in flight before its next forward pass."""
        if self.batcher is not None:
            self.batcher.close(timeout=1 if abandon else 30, abandon=abandon)

    async def score(
        self, pairs: Sequence[Pair], *, doc_tokens: int | None = None
    ) -> tuple[list[Scored], int]:
        """Scores of ``pairs`` in order (identical pairs scored once) and the real tokens read.

        Admission comes first: the unique pairs are counted against the queue bound before any
        tokenising (:class:`QueueFull` costs nothing). ``--timeout`` covers everything after it,
        tokenising included. ``doc_tokens`` cuts each passage to that many tokens first (Cohere's
        ``max_tokens_per_doc``).
        """
        scorer, batcher = self._started()
        if doc_tokens is not None and doc_tokens < 1:
            raise UsageError("max_tokens_per_doc must be at least 1.")
        unique = list(dict.fromkeys(pairs))
        admission = batcher.admit(len(unique))
        try:
            scored, tokens = await asyncio.wait_for(
                self._score_admitted(scorer, batcher, admission, unique, doc_tokens),
                self.limits.timeout_seconds,
            )
        except asyncio.TimeoutError:
            raise RequestTimeout(
                f"not scored within {self.limits.timeout_seconds:g}s; the service is overloaded."
            ) from None
        finally:
            batcher.release(admission)  # a no-op once submitted
        by_pair = dict(zip(unique, scored, strict=True))
        return [by_pair[p] for p in pairs], tokens

    async def _score_admitted(
        self,
        scorer: Scorer,
        batcher: Batcher,
        admission: Admission,
        unique: list[Pair],
        doc_tokens: int | None,
    ) -> tuple[list[Scored], int]:
        if doc_tokens is not None:
            clip = getattr(scorer, "clip", None)
            if clip is None:
                raise UsageError("this model's scorer cannot cut documents to a token count.")
            clipped = await asyncio.to_thread(clip, [p.passage for p in unique], doc_tokens)
            unique = [Pair(p.query, text) for p, (text, _) in zip(unique, clipped, strict=True)]
        windows = await asyncio.to_thread(encode_pairs, scorer, unique, self.options)
        flat = [seq for per_pair in windows for seq in per_pair]
        ticket = batcher.submit(flat, admission)
        try:
            logits = await asyncio.wrap_future(ticket.future)
        finally:
            if not ticket.future.done():  # timed out, client gone or shutting down: stop paying for it
                ticket.abandon()
        return reduce_windows(windows, logits, chunked=self.options.long_docs == "chunk"), sum(
            len(seq.ids) for seq in flat
        )

    async def rank(
        self, query: str, texts: Sequence[str], *, top_n: int | None = None, doc_tokens: int | None = None
    ) -> Ranking:
        """``texts`` scored against ``query`` and sorted best first (ties keep input order)."""
        if len(texts) > self.limits.max_docs:
            raise TooManyDocuments(len(texts), self.limits.max_docs)
        if not texts:
            return Ranking((), 0, False)
        scored, tokens = await self.score([Pair(query, t) for t in texts], doc_tokens=doc_tokens)
        documents = [Document(i, t) for i, t in enumerate(texts)]
        ranked = rank_documents(documents, scored, top_k=top_n)
        best = max(range(len(scored)), key=lambda i: (scored[i].logit, -i))
        return Ranking(ranked, tokens, best != 0, sum(s.truncated for s in scored))

    def _started(self) -> tuple[Scorer, Batcher]:
        if self.scorer is None or self.batcher is None or not self.ready:
            raise NotReady("the model is still loading; see GET /ready.")
        return self.scorer, self.batcher


class TooManyDocuments(UsageError):
    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"{count} documents in one request; the limit is {limit}.")
