"""Results as data: records (dicts) serialised as JSONL (orjson), TSV or TREC lines to a byte stream.

Nothing here passes through Rich; terminal views (tables, charts) live in the CLI (``cli/views.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, BinaryIO

import orjson

from .records import RankedDocument, RerankResult, Scored, ScoreItem


def merge(theirs: dict[str, Any], ours: dict[str, Any], *, ours_first: bool = False) -> dict[str, Any]:
    """Add our fields to a user record; a user field we would overwrite is kept as ``input_<name>``."""
    renamed = {f"input_{key}" if key in ours else key: value for key, value in theirs.items()}
    return {**ours, **renamed} if ours_first else {**renamed, **ours}


def score_fields(scored: Scored) -> dict[str, Any]:
    """The fields every scored item carries (``query_dropped_tokens`` and ``best_chunk`` only when set)."""
    fields: dict[str, Any] = {
        "score": scored.score,
        "logit": scored.logit,
        "truncated": scored.truncated,
        "dropped_tokens": scored.dropped_tokens,
    }
    if scored.query_dropped_tokens:
        fields["query_dropped_tokens"] = scored.query_dropped_tokens
    if scored.best_chunk is not None:
        c = scored.best_chunk
        fields["best_chunk"] = {"index": c.index, "start": c.start, "end": c.end, "chunks": c.count}
    return fields


def score_record(item: ScoreItem, scored: Scored) -> dict[str, Any]:
    return merge(item.record, score_fields(scored))


def ranked_record(doc: RankedDocument) -> dict[str, Any]:
    ours = {"index": doc.index, "rank": doc.rank, **score_fields(doc.scored), "text": doc.text}
    return merge(doc.fields, ours, ours_first=True)


def rerank_record(result: RerankResult) -> dict[str, Any]:
    return merge(result.record, {"results": [ranked_record(d) for d in result.results]})


class JsonlWriter:
    """One JSON object per line, UTF-8, written with orjson. ``flush`` after each batch of records."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def write(self, record: dict[str, Any]) -> None:
        self._stream.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS))

    def flush(self) -> None:
        self._stream.flush()


def _tsv_cell(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode() if value is not None else ""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


class TsvWriter:
    """Tab-separated rows with a header; tabs and newlines inside text are escaped as ``\\t``/``\\n``."""

    def __init__(self, stream: BinaryIO, columns: Iterable[str]) -> None:
        self._stream = stream
        self._columns = list(columns)
        self._line(self._columns)

    def _line(self, cells: Iterable[Any]) -> None:
        self._stream.write(("\t".join(_tsv_cell(c) for c in cells) + "\n").encode("utf-8"))

    def write(self, record: dict[str, Any]) -> None:
        self._line(record.get(c) for c in self._columns)

    def flush(self) -> None:
        self._stream.flush()


class LineWriter:
    """Plain text lines (TREC runs)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def write(self, line: str) -> None:
        self._stream.write(line.encode("utf-8") + b"\n")

    def flush(self) -> None:
        self._stream.flush()


def rerank_trec_lines(result: RerankResult) -> list[str]:
    """``qid Q0 docid rank score tag`` per result; qid from the record (qid/query_id), docid from ``id``."""
    from .ir import RunEntry, doc_id, query_id, trec_lines

    entries = [RunEntry(doc_id(d.fields, d.index), d.rank, d.logit) for d in result.results]
    return trec_lines(query_id(result.record, result.line), entries)


SCORE_TSV = ("line", "score", "logit", "truncated", "query", "passage")
RERANK_TSV = ("line", "rank", "index", "id", "score", "logit", "truncated", "text")


def score_tsv_row(item: ScoreItem, scored: Scored) -> dict[str, Any]:
    return {"line": item.line, **score_fields(scored), "query": item.query, "passage": item.passage}


def rerank_tsv_rows(result: RerankResult) -> list[dict[str, Any]]:
    return [{"line": result.line, "id": d.fields.get("id"), **ranked_record(d)} for d in result.results]
