"""Batching, de-duplication, sorting and top-k: pure Python over a :class:`Scorer`.

The engine never imports torch. A scorer turns pairs into token sequences (``encode``) and token
sequences into logits (``logits``); the engine decides which sequences go together in a batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from .records import Document, Pair, RankedDocument, RerankItem, RerankResult, Scored, ScoreItem

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Encoded:
    """A tokenised pair ready for the model. ``dropped_tokens`` counts passage tokens cut off."""

    ids: list[int]
    type_ids: list[int] | None = None
    dropped_tokens: int = 0


class Scorer(Protocol):
    """The seam between the engine and a model backend."""

    @property
    def batch_size(self) -> int: ...

    def encode(self, pairs: Sequence[Pair]) -> list[Encoded]: ...

    def logits(self, batch: Sequence[Encoded]) -> list[float]: ...


ProgressCallback = Callable[[int], None]


def score_pairs(
    scorer: Scorer,
    pairs: Sequence[Pair],
    *,
    batch_size: int | None = None,
    on_progress: ProgressCallback | None = None,
) -> list[Scored]:
    """Score ``pairs`` and return one :class:`Scored` per pair, in input order.

    Identical pairs are scored once. Pairs are sorted by token length so each batch holds
    sequences of similar length (little padding), then results are put back in input order.
    """
    if not pairs:
        return []
    size = batch_size or scorer.batch_size
    unique = list(dict.fromkeys(pairs))
    encoded = scorer.encode(unique)
    order = sorted(range(len(unique)), key=lambda i: len(encoded[i].ids), reverse=True)
    logits: list[float] = [0.0] * len(unique)
    for start in range(0, len(order), size):
        batch_idx = order[start : start + size]
        for i, value in zip(batch_idx, scorer.logits([encoded[i] for i in batch_idx]), strict=True):
            logits[i] = value
        if on_progress is not None:
            on_progress(len(batch_idx))
    by_pair = {
        pair: Scored(logits[i], encoded[i].dropped_tokens > 0, encoded[i].dropped_tokens)
        for i, pair in enumerate(unique)
    }
    return [by_pair[pair] for pair in pairs]


def rank_documents(
    documents: Sequence[Document],
    scores: Sequence[Scored],
    *,
    top_k: int | None = None,
    min_score: float | None = None,
) -> tuple[RankedDocument, ...]:
    """Sort documents best first (ties keep input order), then apply ``min_score`` and ``top_k``."""
    order = sorted(range(len(documents)), key=lambda i: (-scores[i].logit, i))
    ranked: list[RankedDocument] = []
    for i in order:
        if min_score is not None and scores[i].score < min_score:
            break
        if top_k is not None and len(ranked) >= top_k:
            break
        doc = documents[i]
        ranked.append(RankedDocument(doc.index, len(ranked) + 1, doc.text, scores[i], doc.fields))
    return tuple(ranked)


def chunked(items: Iterable[T], size_of: Callable[[T], int], budget: int) -> Iterator[list[T]]:
    """Group a stream into lists whose summed ``size_of`` reaches ``budget`` (the last may be smaller)."""
    chunk: list[T] = []
    total = 0
    for item in items:
        chunk.append(item)
        total += size_of(item)
        if total >= budget:
            yield chunk
            chunk, total = [], 0
    if chunk:
        yield chunk


def chunk_budget(scorer: Scorer) -> int:
    """How many pairs to gather before scoring: enough to sort into full batches, small enough to stream."""
    return max(scorer.batch_size * 8, 256)


def score_stream(
    scorer: Scorer, items: Iterable[ScoreItem], *, on_progress: ProgressCallback | None = None
) -> Iterator[list[tuple[ScoreItem, Scored]]]:
    """Score a stream of pairs chunk by chunk; each yielded chunk is complete and in input order."""
    for chunk in chunked(items, lambda _: 1, chunk_budget(scorer)):
        scores = score_pairs(scorer, [item.pair for item in chunk], on_progress=on_progress)
        yield list(zip(chunk, scores, strict=True))


def rerank_stream(
    scorer: Scorer,
    items: Iterable[RerankItem],
    *,
    top_k: int | None = None,
    min_score: float | None = None,
    on_progress: ProgressCallback | None = None,
) -> Iterator[list[RerankResult]]:
    """Rerank a stream of queries; several small queries share batches; chunks keep input order."""
    for chunk in chunked(items, lambda item: max(1, len(item.documents)), chunk_budget(scorer)):
        pairs = [Pair(item.query, doc.text) for item in chunk for doc in item.documents]
        scores = score_pairs(scorer, pairs, on_progress=on_progress)
        results, start = [], 0
        for item in chunk:
            mine = scores[start : start + len(item.documents)]
            start += len(item.documents)
            ranked = rank_documents(item.documents, mine, top_k=top_k, min_score=min_score)
            results.append(RerankResult(item.query, ranked, item.line, item.record, len(item.documents)))
        yield results
