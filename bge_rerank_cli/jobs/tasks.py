"""What a job does with its items: score pairs, or rerank each query's candidates.

A task parses an input object into an item, turns a stream of items into groups of result rows through
the engine, serialises a row for each output format, and says whether an item is the one an output
record came from (so a resumed job can prove it continues the same input). Tasks are frozen and
picklable: the Ray engine ships them to its actors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from ..backends.base import BatchScorer
from ..config import ScoreOptions
from ..engine import JobControl, rerank_stream, score_stream
from ..inputs import parse_rerank_item, parse_score_item
from ..outputs import (
    RERANK_TSV,
    SCORE_TSV,
    rerank_record,
    rerank_trec_lines,
    rerank_tsv_rows,
    score_record,
    score_tsv_row,
)
from ..records import RerankItem, RerankResult, Scored, ScoreItem

Item = TypeVar("Item")
Row = TypeVar("Row")
ScoreRow = tuple[ScoreItem, Scored]


class Task(Protocol, Generic[Item, Row]):
    kind: ClassVar[str]  # "score" or "rerank"
    unit: ClassVar[str]  # what one output record is, for summaries: "records", "queries"
    tsv_columns: ClassVar[tuple[str, ...]]
    ranked: ClassVar[bool]  # rows are ranked lists (TREC output possible)

    def parse(self, obj: dict[str, Any], line: int, source: str) -> Item: ...

    def stream(
        self, scorer: BatchScorer, items: Iterable[Item], control: JobControl
    ) -> Iterator[list[Row]]: ...

    def line_of(self, row: Row) -> int: ...

    def to_json(self, row: Row) -> dict[str, Any]: ...

    def to_tsv(self, row: Row) -> list[dict[str, Any]]: ...

    def to_trec(self, row: Row) -> list[str]: ...

    def mismatches(self, item: Item, record: dict[str, Any]) -> list[str]: ...


def _field_mismatches(fields: dict[str, Any], record: dict[str, Any]) -> list[str]:
    """Input fields that the output record does not carry unchanged (ours win name clashes: the input's
    value then sits under ``input_<name>``)."""
    missing = object()
    return [
        key
        for key, value in fields.items()
        if value not in (record.get(key, missing), record.get(f"input_{key}", missing))
    ]


@dataclass(frozen=True)
class ScoreTask:
    """One score per (query, passage) item, records in input order."""

    options: ScoreOptions = field(default_factory=ScoreOptions)

    kind: ClassVar[str] = "score"
    unit: ClassVar[str] = "records"
    tsv_columns: ClassVar[tuple[str, ...]] = SCORE_TSV
    ranked: ClassVar[bool] = False

    def parse(self, obj: dict[str, Any], line: int, source: str) -> ScoreItem:
        return parse_score_item(obj, line, source)

    def stream(
        self, scorer: BatchScorer, items: Iterable[ScoreItem], control: JobControl
    ) -> Iterator[list[ScoreRow]]:
        return score_stream(scorer, items, options=self.options, control=control)

    def line_of(self, row: ScoreRow) -> int:
        return row[0].line

    def to_json(self, row: ScoreRow) -> dict[str, Any]:
        return score_record(*row)

    def to_tsv(self, row: ScoreRow) -> list[dict[str, Any]]:
        return [score_tsv_row(*row)]

    def to_trec(self, row: ScoreRow) -> list[str]:
        raise TypeError("score rows are not ranked")

    def mismatches(self, item: ScoreItem, record: dict[str, Any]) -> list[str]:
        return _field_mismatches(item.record or {"query": item.query, "passage": item.passage}, record)


@dataclass(frozen=True)
class RerankTask:
    """Each query's candidates best first; ``depth`` scores only the first K of each (input order),
    ``top_k`` and ``min_score`` cut what is kept."""

    options: ScoreOptions = field(default_factory=ScoreOptions)
    top_k: int | None = None
    min_score: float | None = None
    depth: int | None = None

    kind: ClassVar[str] = "rerank"
    unit: ClassVar[str] = "queries"
    tsv_columns: ClassVar[tuple[str, ...]] = RERANK_TSV
    ranked: ClassVar[bool] = True

    def parse(self, obj: dict[str, Any], line: int, source: str) -> RerankItem:
        return self._cut(parse_rerank_item(obj, line, source))

    def _cut(self, item: RerankItem) -> RerankItem:
        if self.depth is None or len(item.documents) <= self.depth:
            return item
        return RerankItem(item.line, item.query, item.documents[: self.depth], item.record)

    def stream(
        self, scorer: BatchScorer, items: Iterable[RerankItem], control: JobControl
    ) -> Iterator[list[RerankResult]]:
        items = items if self.depth is None else (self._cut(item) for item in items)
        return rerank_stream(
            scorer, items, top_k=self.top_k, min_score=self.min_score, options=self.options, control=control
        )

    def line_of(self, row: RerankResult) -> int:
        return row.line

    def to_json(self, row: RerankResult) -> dict[str, Any]:
        return rerank_record(row)

    def to_tsv(self, row: RerankResult) -> list[dict[str, Any]]:
        return rerank_tsv_rows(row)

    def to_trec(self, row: RerankResult) -> list[str]:
        return rerank_trec_lines(row)

    def mismatches(self, item: RerankItem, record: dict[str, Any]) -> list[str]:
        wrong = _field_mismatches(item.record or {"query": item.query}, record)
        item = self._cut(item)
        results = record.get("results")
        if not isinstance(results, list) or len(results) > len(item.documents):
            return [*wrong, "results"]
        for result in results:
            index = result.get("index") if isinstance(result, dict) else None
            if not isinstance(index, int) or not 0 <= index < len(item.documents):
                return [*wrong, "results"]
            if item.documents[index].text != result.get("text"):
                return [*wrong, "documents"]
        return wrong
