"""Batching, de-duplication, windows, sorting and top-k: pure Python over a :class:`Scorer`.

The engine never imports torch. A scorer turns pairs into token sequences (``encode`` /
``encode_windows``) and token sequences into logits (``logits``); the engine decides which sequences
share a batch, scores each distinct pair once, and puts results back in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from .backends.base import BatchScorer, BatchTooLarge, Encoded
from .config import ScoreOptions
from .records import Chunk, Document, Pair, RankedDocument, RerankItem, RerankResult, Scored, ScoreItem

T = TypeVar("T")


ProgressCallback = Callable[[int], None]


class Interrupted(Exception):
    """Raised between batches when the job was asked to stop; the group in progress is abandoned."""


class PairLookup(Protocol):
    """What the engine needs of a score cache (:class:`bge_rerank_cli.score_cache.PairCache`): records
    for pairs it holds (``None`` for the rest), and the records of pairs just scored. ``failed`` says why
    the store is off (then a lookup answers nothing and is not counted), ``None`` while it works."""

    @property
    def failed(self) -> str | None: ...

    def lookup(self, pairs: Sequence[Pair]) -> list[Scored | None]: ...

    def remember(self, pairs: Sequence[Pair], scored: Sequence[Scored]) -> None: ...


@dataclass
class RunStats:
    """Counters a run accumulates for its end-of-run summary."""

    pairs: int = 0
    unique_pairs: int = 0
    sequences: int = 0  # model inputs: pairs, or windows in chunk mode
    truncated: int = 0
    windowed: int = 0  # passages split into more than one window
    oom_splits: int = 0  # batches split after running out of memory
    queries: int = 0  # rerank groups
    top1_replaced: int = 0  # groups whose best document was not first in the input
    cache_hits: int = 0  # distinct pairs the score cache answered
    cache_misses: int = 0  # distinct pairs it was asked for and the model scored
    cache_failed: str | None = None  # why the store went off part-way (or from the start), if it did

    def add(self, pairs: int, scored: Sequence[Scored], unique: int, sequences: int) -> None:
        self.pairs += pairs
        self.unique_pairs += unique
        self.sequences += sequences
        self.truncated += sum(1 for s in scored if s.truncated)
        self.windowed += sum(1 for s in scored if s.best_chunk is not None and s.best_chunk.count > 1)


@dataclass
class JobControl:
    """What a long job hands the engine: counters, a progress callback, a stop switch, and ``on_batch``,
    told the input indices each forward pass carried (the service counts requests per pass with it)."""

    stats: RunStats = field(default_factory=RunStats)
    on_progress: ProgressCallback | None = None
    should_stop: Callable[[], bool] | None = None
    on_batch: Callable[[Sequence[int]], None] | None = None
    cache: PairLookup | None = None  # a score cache bound to the scorer's settings

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Interrupted

    def advance(self, n: int) -> None:
        if self.on_progress is not None:
            self.on_progress(n)


def token_batches(
    indices: Sequence[int],
    lengths: Sequence[int],
    budget: int,
    fill: int | None = None,
    keys: Sequence[Hashable] | None = None,
) -> list[list[int]]:
    """``indices`` grouped into batches, longest first, each filled up to ``budget`` padded tokens.

    Sorting by length keeps padding low; a token budget instead of a fixed count lets short pairs go
    in large batches and long ones in small batches. A sequence longer than the budget goes alone.
    Once a batch holds ``fill`` real tokens, it closes before a sequence shorter than 7/8 of its
    longest, which would mostly add padding. With ``keys`` (a decoder's shared prompt prefix), the
    sequences of one key go together, longest first, and a batch never holds two keys.
    """
    if keys is None:
        order = sorted(indices, key=lambda i: lengths[i], reverse=True)
    else:
        first = {key: n for n, key in reversed(list(enumerate(keys[i] for i in indices)))}
        order = sorted(indices, key=lambda i: (first[keys[i]], -lengths[i]))
    fill = budget if fill is None else fill
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        if current:
            width = lengths[current[0]]
            over = (len(current) + 1) * width > budget
            padded = real >= fill and lengths[i] * 8 < width * 7
            other = keys is not None and keys[i] != keys[current[0]]
            if over or padded or other:
                batches.append(current)
                current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        batches.append(current)
    return batches


def prefix_keys(scorer: BatchScorer, encoded: Sequence[Encoded]) -> list[tuple[int, ...]] | None:
    """The batching keys of :func:`token_batches` for ``scorer``: each sequence's shared prompt prefix
    when the scorer reuses prefixes (it wants each batch to hold one query's sequences), else None."""
    return [e.prefix_key for e in encoded] if getattr(scorer, "groups_prefixes", False) else None


def score_encoded(
    scorer: BatchScorer, encoded: Sequence[Encoded], *, control: JobControl | None = None
) -> list[float]:
    """Logits for token sequences, in input order, batched by :func:`token_batches`.

    A batch the scorer reports as too large (:class:`BatchTooLarge`, e.g. CUDA out of memory) is split
    in halves and retried; finished batches are kept, and the batches still to come are re-formed under
    the smaller budget.
    """
    control = control or JobControl()
    lengths = [len(e.ids) for e in encoded]
    logits: list[float] = [0.0] * len(encoded)
    budget, fill = scorer.batch_tokens, scorer.fill_tokens
    keys = prefix_keys(scorer, encoded)
    pending = token_batches(range(len(encoded)), lengths, budget, fill, keys)
    while pending:
        control.check()
        batch = pending.pop(0)
        try:
            values = scorer.logits([encoded[i] for i in batch])
        except BatchTooLarge:
            if len(batch) == 1:
                raise
            half = len(batch) // 2
            budget = half * lengths[batch[0]]
            rest = [i for b in pending for i in b]
            pending = [batch[:half], batch[half:], *token_batches(rest, lengths, budget, fill, keys)]
            control.stats.oom_splits += 1
            continue
        for i, value in zip(batch, values, strict=True):
            logits[i] = value
        if control.on_batch is not None:
            control.on_batch(batch)
        control.advance(len(batch))
    return logits


def _scored(enc: Encoded, logit: float, chunk: Chunk | None = None) -> Scored:
    truncated = enc.dropped_tokens > 0 or enc.query_dropped > 0
    return Scored(logit, truncated, enc.dropped_tokens, enc.query_dropped, chunk)


def score_pairs(
    scorer: BatchScorer,
    pairs: Sequence[Pair],
    *,
    options: ScoreOptions | None = None,
    control: JobControl | None = None,
) -> list[Scored]:
    """Score ``pairs`` and return one :class:`Scored` per pair, in input order.

    Identical pairs are scored once, and pairs a score cache (``control.cache``) holds not at all: only
    the misses are batched, and what they score is remembered. With ``options.long_docs == "chunk"``, a passage too long for one
    sequence is scored window by window and takes its best window's score (``best_chunk`` says where).
    Distinct pairs are tokenised and scored in slices, so one huge query (100,000 candidates) does not
    hold every token sequence in memory at once.
    """
    if not pairs:
        return []
    options = options or ScoreOptions()
    control = control or JobControl()
    unique = list(dict.fromkeys(pairs))
    by_pair: dict[Pair, Scored] = {}
    if control.cache is not None:
        known = control.cache.lookup(unique)
        by_pair = {pair: hit for pair, hit in zip(unique, known, strict=True) if hit is not None}
        failed = control.cache.failed
        if failed is None:  # a store that failed was not asked, or did not answer: no hits, no misses
            control.stats.cache_hits += len(by_pair)
            control.stats.cache_misses += len(unique) - len(by_pair)
        elif control.stats.cache_failed is None:
            control.stats.cache_failed = failed
    missing = [pair for pair in unique if pair not in by_pair] if by_pair else unique
    sequences = 0
    step = group_budget(scorer)
    for start in range(0, len(missing), step):
        part = missing[start : start + step]
        results, used = _score_distinct(scorer, part, options, control)
        by_pair.update(zip(part, results, strict=True))
        sequences += used
        if control.cache is not None:
            control.cache.remember(part, results)
    scored = [by_pair[pair] for pair in pairs]
    control.stats.add(len(pairs), scored, len(unique), sequences)
    return scored


def _score_distinct(
    scorer: BatchScorer, pairs: Sequence[Pair], options: ScoreOptions, control: JobControl
) -> tuple[list[Scored], int]:
    windows = encode_pairs(scorer, pairs, options)
    flat = [w for per_pair in windows for w in per_pair]
    logits = score_encoded(scorer, flat, control=control)
    return reduce_windows(windows, logits, chunked=options.long_docs == "chunk"), len(flat)


def encode_pairs(scorer: BatchScorer, pairs: Sequence[Pair], options: ScoreOptions) -> list[list[Encoded]]:
    """Each pair as the sequences the model scores: one (cut to fit), or its windows in chunk mode."""
    if options.long_docs != "chunk":
        return [[enc] for enc in scorer.encode(pairs)]
    return scorer.encode_windows(pairs, overlap=options.chunk_overlap, max_chunks=options.max_chunks)


def reduce_windows(
    windows: Sequence[Sequence[Encoded]], logits: Sequence[float], *, chunked: bool
) -> list[Scored]:
    """One :class:`Scored` per pair from the logits of its sequences (in :func:`encode_pairs` order): the
    pair's own score, or in chunk mode its best window's, with ``best_chunk`` saying where it is."""
    results, start = [], 0
    for per_pair in windows:
        mine = logits[start : start + len(per_pair)]
        start += len(per_pair)
        if not chunked:
            results.append(_scored(per_pair[0], mine[0]))
            continue
        best = max(range(len(mine)), key=lambda i: (mine[i], -i))
        span = per_pair[best].span or (0, 0)
        results.append(_scored(per_pair[best], mine[best], Chunk(best, span[0], span[1], len(per_pair))))
    return results


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


def groups(items: Iterable[T], size_of: Callable[[T], int], budget: int) -> Iterator[list[T]]:
    """A stream of input items cut into groups whose summed ``size_of`` reaches ``budget`` (the last may
    be smaller). A group is scored, written and checkpointed as one unit."""
    group: list[T] = []
    total = 0
    for item in items:
        group.append(item)
        total += size_of(item)
        if total >= budget:
            yield group
            group, total = [], 0
    if group:
        yield group


def group_budget(scorer: BatchScorer) -> int:
    """How many pairs to gather before scoring: enough to sort into full batches, small enough to stream."""
    return max(scorer.batch_size * 8, 256)


def score_stream(
    scorer: BatchScorer,
    items: Iterable[ScoreItem],
    *,
    options: ScoreOptions | None = None,
    control: JobControl | None = None,
) -> Iterator[list[tuple[ScoreItem, Scored]]]:
    """Score a stream of pairs group by group; each yielded group is complete and in input order."""
    for group in groups(items, lambda _: 1, group_budget(scorer)):
        pairs = [item.pair for item in group]
        scores = score_pairs(scorer, pairs, options=options, control=control)
        yield list(zip(group, scores, strict=True))


def rerank_stream(
    scorer: BatchScorer,
    items: Iterable[RerankItem],
    *,
    top_k: int | None = None,
    min_score: float | None = None,
    options: ScoreOptions | None = None,
    control: JobControl | None = None,
) -> Iterator[list[RerankResult]]:
    """Rerank a stream of queries; several small queries share batches; groups keep input order."""
    control = control or JobControl()
    for group in groups(items, lambda item: max(1, len(item.documents)), group_budget(scorer)):
        pairs = [Pair(item.query, doc.text) for item in group for doc in item.documents]
        scores = score_pairs(scorer, pairs, options=options, control=control)
        results, start = [], 0
        for item in group:
            mine = scores[start : start + len(item.documents)]
            start += len(item.documents)
            ranked = rank_documents(item.documents, mine, top_k=top_k, min_score=min_score)
            control.stats.queries += 1
            control.stats.top1_replaced += (
                bool(mine) and max(range(len(mine)), key=lambda i: (mine[i].logit, -i)) != 0
            )
            results.append(RerankResult(item.query, ranked, item.line, item.record, len(item.documents)))
        yield results
