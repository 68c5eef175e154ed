"""Typed records at the edges: what comes in, what goes out. Serialised only in ``outputs.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def sigmoid(logit: float) -> float:
    """Numerically stable logistic function: the 0..1 ``score`` of a raw ``logit``."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    z = math.exp(logit)
    return z / (1.0 + z)


@dataclass(frozen=True, slots=True)
class Pair:
    query: str
    passage: str


@dataclass(frozen=True, slots=True)
class Chunk:
    """The window of a long passage that scored best: its number, character span, and how many there were."""

    index: int
    start: int
    end: int
    count: int


@dataclass(frozen=True, slots=True)
class Scored:
    """The model's verdict on one pair. ``score`` is ``sigmoid(logit)``; both sort identically.

    ``truncated`` is true when any token of the pair was cut: ``dropped_tokens`` passage tokens and
    ``query_dropped_tokens`` query tokens (past the query's cap). ``best_chunk`` is set in chunk mode.
    """

    logit: float
    truncated: bool = False
    dropped_tokens: int = 0
    query_dropped_tokens: int = 0
    best_chunk: Chunk | None = None

    @property
    def score(self) -> float:
        return sigmoid(self.logit)


@dataclass(frozen=True, slots=True)
class ScoreItem:
    """One input line of ``bge-rerank score``: a pair plus every field of the original record."""

    line: int
    query: str
    passage: str
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def pair(self) -> Pair:
        return Pair(self.query, self.passage)


@dataclass(frozen=True, slots=True)
class Document:
    """One candidate: its position in the input, its text, and its other fields (id, title, ...)."""

    index: int
    text: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RerankItem:
    """One input line of ``bge-rerank rerank``. ``record`` holds the line's fields minus the documents."""

    line: int
    query: str
    documents: tuple[Document, ...]
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RankedDocument:
    index: int
    rank: int
    text: str
    scored: Scored
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.scored.score

    @property
    def logit(self) -> float:
        return self.scored.logit


@dataclass(frozen=True, slots=True)
class RerankResult:
    """Documents of one query, best first (after ``top_k`` / ``min_score``)."""

    query: str
    results: tuple[RankedDocument, ...]
    line: int = 0
    record: dict[str, Any] = field(default_factory=dict)
    candidates: int = 0  # how many documents were scored, before top-k / min-score
