"""The keyword trap, shown: a BM25 first stage versus the cross-encoder on the same candidates."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .backends import Scorer
from .config import Choice, ScoreOptions
from .demo_data import DEMO_QUERIES, DemoQuery
from .engine import score_pairs
from .records import Pair, Scored


class Lang(Choice):
    """Which demo examples: Chinese, English or both."""

    ZH = "zh"
    EN = "en"
    ALL = "all"


_LATIN = re.compile(r"[a-z0-9_]+")
_CJK_RUN = re.compile(r"[\u3400-\u9fff]+")


def bm25_tokens(text: str) -> list[str]:
    """Latin words, plus CJK characters and character bigrams (Chinese has no spaces)."""
    lowered = text.lower()
    tokens = _LATIN.findall(lowered)
    for run in _CJK_RUN.findall(lowered):
        tokens.extend(run)
        tokens.extend(run[i : i + 2] for i in range(len(run) - 1))
    return tokens


def bm25_scores(query: str, passages: Sequence[str]) -> list[float]:
    """Okapi BM25 of each passage for the query, from the bm25s library (the demo's first stage)."""
    import bm25s

    retriever = bm25s.BM25()
    retriever.index([bm25_tokens(p) for p in passages], show_progress=False)
    return [float(s) for s in retriever.get_scores(bm25_tokens(query))]


@dataclass(frozen=True)
class DemoRow:
    id: str
    text: str
    answer: bool
    bm25_rank: int
    bm25_score: float
    rank: int
    scored: Scored

    @property
    def score(self) -> float:
        return self.scored.score

    @property
    def logit(self) -> float:
        return self.scored.logit

    @property
    def change(self) -> int:
        """Positions gained by reranking (positive = moved up)."""
        return self.bm25_rank - self.rank


@dataclass(frozen=True)
class DemoResult:
    lang: str
    query: str
    rows: tuple[DemoRow, ...]  # reranked order
    latency_s: float

    @property
    def bm25_order(self) -> tuple[DemoRow, ...]:
        return tuple(sorted(self.rows, key=lambda r: r.bm25_rank))


@dataclass(frozen=True)
class DemoTimings:
    model: str
    device: str
    dtype: str
    load_s: float
    pairs: int
    scoring_s: float
    random_weights: bool = False

    @property
    def pairs_per_s(self) -> float:
        return self.pairs / self.scoring_s if self.scoring_s > 0 else 0.0


def demo_queries(lang: str) -> list[DemoQuery]:
    lang = Lang.parse("lang", lang)
    return [q for q in DEMO_QUERIES if lang in ("all", q.lang)]


def run_query(scorer: Scorer, query: DemoQuery, options: ScoreOptions | None = None) -> DemoResult:
    texts = [p.text for p in query.passages]
    bm25 = bm25_scores(query.query, texts)
    bm25_rank = _ranks(bm25)
    started = time.perf_counter()
    scored = score_pairs(scorer, [Pair(query.query, t) for t in texts], options=options)
    latency = time.perf_counter() - started
    rerank_rank = _ranks([s.logit for s in scored])
    rows = [
        DemoRow(p.id, p.text, p.answer, bm25_rank[i], bm25[i], rerank_rank[i], scored[i])
        for i, p in enumerate(query.passages)
    ]
    return DemoResult(query.lang, query.query, tuple(sorted(rows, key=lambda r: r.rank)), latency)


def _ranks(values: Sequence[float]) -> list[int]:
    """1-based rank of each value, highest first; ties keep input order."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    ranks = [0] * len(values)
    for rank, i in enumerate(order, start=1):
        ranks[i] = rank
    return ranks


def timings(scorer: Scorer, results: Sequence[DemoResult]) -> DemoTimings:
    info: dict[str, Any] = getattr(scorer, "describe", dict)()
    return DemoTimings(
        model=str(info.get("model", "?")),
        device=str(info.get("device", "?")),
        dtype=str(info.get("dtype", "?")),
        load_s=float(getattr(scorer, "load_seconds", 0.0)),
        pairs=sum(len(r.rows) for r in results),
        scoring_s=sum(r.latency_s for r in results),
        random_weights=bool(info.get("random_weights", False)),
    )
