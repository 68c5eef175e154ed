"""Everything that leaves the program: JSONL (orjson), TSV, Rich tables and bar charts.

JSONL and TSV go to a byte stream and never pass through Rich. Tables and charts go to a Rich
console and escape user text so ``[brackets]`` in passages are shown, not parsed as markup.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any, BinaryIO

import orjson

from .records import RankedDocument, RerankResult, Scored, ScoreItem

FORMATS = ("auto", "jsonl", "table", "chart", "tsv", "trec")
TEXT_WIDTH = 120  # characters of passage text shown in tables


def resolve_format(fmt: str, output: IO[Any] | None) -> str:
    """``auto`` is a table on an interactive terminal and JSONL everywhere else (pipes, files)."""
    if fmt != "auto":
        return fmt
    stream = output if output is not None else sys.stdout
    return "table" if stream.isatty() else "jsonl"


def _merge(theirs: dict[str, Any], ours: dict[str, Any], *, ours_first: bool = False) -> dict[str, Any]:
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
    return _merge(item.record, score_fields(scored))


def ranked_record(doc: RankedDocument) -> dict[str, Any]:
    ours = {"index": doc.index, "rank": doc.rank, **score_fields(doc.scored), "text": doc.text}
    return _merge(doc.fields, ours, ours_first=True)


def rerank_record(result: RerankResult) -> dict[str, Any]:
    return _merge(result.record, {"results": [ranked_record(d) for d in result.results]})


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


# --- Rich renderings (terminal only) ---------------------------------------------------------


def bar(score: float, width: int = 20) -> str:
    filled = max(0, min(width, round(score * width)))
    return "█" * filled + "░" * (width - filled)


def elide(text: str, limit: int = TEXT_WIDTH) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def render_score_table(rows: list[tuple[ScoreItem, Scored]], console: Any, chart: bool = False) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="scores", title_justify="left", show_lines=False, expand=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("score", justify="right")
    table.add_column("" if chart else "logit", justify="left" if chart else "right")
    table.add_column("query", overflow="ellipsis", max_width=40)
    table.add_column("passage", overflow="ellipsis")
    for item, scored in rows:
        third = f"[green]{bar(scored.score)}[/]" if chart else f"{scored.logit:.3f}"
        table.add_row(
            str(item.line),
            f"{scored.score:.4f}",
            third,
            escape(elide(item.query, 60)),
            escape(elide(item.passage)),
        )
    console.print(table)


def render_rerank_tables(results: list[RerankResult], console: Any, chart: bool = False) -> None:
    for result in results:
        render_rerank_table(result, console, chart)


def render_rerank_table(result: RerankResult, console: Any, chart: bool = False) -> None:
    from rich.markup import escape
    from rich.table import Table

    title = (
        f"[bold]{escape(elide(result.query, 100))}[/]  [dim]({len(result.results)} of {result.candidates})[/]"
    )
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    table.add_column("", justify="left")
    table.add_column("was", justify="right", style="dim")
    table.add_column("text", overflow="ellipsis", max_width=50 if chart else None)
    for doc in result.results:
        label = doc.fields.get("id") or doc.fields.get("title")
        prefix = f"[cyan]{escape(str(label))}[/] " if label is not None else ""
        text = prefix + escape(elide(doc.text, 48 if chart else TEXT_WIDTH))
        table.add_row(
            str(doc.rank), f"{doc.score:.4f}", f"[green]{bar(doc.score)}[/]", str(doc.index + 1), text
        )
    console.print(table)
