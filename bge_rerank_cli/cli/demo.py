"""`bge-rerank demo`: watch the keyword trap being solved."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..config import Choice, LoaderConfig, ScoreOptions
from ..demo import DemoResult, DemoRow, DemoTimings, Lang, demo_queries, run_query, timings
from ..errors import ModelError
from ..outputs import score_fields
from . import console as term
from . import options as opt
from .exits import reported_errors
from .views import STAND_IN, bar, elide, print_fitted


class DemoFormat(Choice):
    AUTO = "auto"
    TABLE = "table"
    JSONL = "jsonl"


# Where the model cannot be had, the demo can still be seen end to end, on a random-weight stand-in.
STAND_IN_DEMO = (
    "To see the demo run end to end without it, from a clone of bge-rerank: `bash scripts/main.sh` (a "
    "random-weight stand-in), or `python -m tools.random_model DIR` then `bge-rerank demo --model DIR`; "
    "a stand-in's scores and orders are meaningless."
)


@opt.loader_options()
@opt.long_docs_options()
def demo(
    config: LoaderConfig,
    options: ScoreOptions,
    lang: Annotated[Lang, typer.Option(help="Which examples: Chinese, English or all.")] = Lang.ALL,
    fmt: Annotated[
        DemoFormat, typer.Option("--format", "-f", help="auto: a table on a terminal, JSONL when piped.")
    ] = DemoFormat.AUTO,
    quiet: opt.Quiet = False,
) -> None:
    """Show the keyword trap solved: BM25's order next to the cross-encoder's, with timings.

    For each example query, a keyword retriever (BM25) ranks passages that merely share the query's words high; the reranker reads query and passage together and moves the real answer (marked ✔) up. The long-manual examples hide their answer past the first 512 tokens: truncated passages are marked ✂N (tokens lost); with --long-docs chunk the best window is shown (⧉i/n).
    """
    with reported_errors():
        queries = demo_queries(lang)
        try:
            scorer = term.loader(config, quiet)()
        except ModelError as exc:
            exc.hint = f"{exc.hint} {STAND_IN_DEMO}" if exc.hint else STAND_IN_DEMO
            raise
        as_json = fmt == "jsonl" or (fmt == "auto" and not sys.stdout.isatty())
        console = term.out_console()
        results = []
        for query in queries:
            result = run_query(scorer, query, options)
            results.append(result)
            if as_json:
                _write(_query_record(result))
            else:
                _render(result, console)
        summary = timings(scorer, results)
        if as_json:
            _write(_timings_record(summary, results))
        else:
            _render_timings(summary, results, console)


def _write(record: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
    sys.stdout.buffer.flush()


def _row_record(row: DemoRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "answer": row.answer,
        "rank": row.rank,
        "bm25_rank": row.bm25_rank,
        "bm25_score": row.bm25_score,
        "change": row.change,
        **score_fields(row.scored),
        "text": row.text,
    }


def _query_record(result: DemoResult) -> dict[str, Any]:
    return {
        "type": "query",
        "lang": result.lang,
        "query": result.query,
        "bm25": [{"rank": r.bm25_rank, "id": r.id, "bm25_score": r.bm25_score} for r in result.bm25_order],
        "reranked": [_row_record(r) for r in result.rows],
        "latency_ms": result.latency_s * 1000,
    }


def _timings_record(summary: DemoTimings, results: list[DemoResult]) -> dict[str, Any]:
    latencies = [r.latency_s * 1000 for r in results]
    return {
        "type": "timings",
        "model": summary.model,
        "device": summary.device,
        "dtype": summary.dtype,
        "load_s": summary.load_s,
        "queries": len(results),
        "pairs": summary.pairs,
        "latency_ms_mean": sum(latencies) / len(latencies) if latencies else 0.0,
        "latency_ms_max": max(latencies, default=0.0),
        "pairs_per_s": summary.pairs_per_s,
        "random_weights": summary.random_weights,
    }


def _marks(row: DemoRow) -> tuple[str, str]:
    """The row's marks (✔ answer, ✂N tokens cut, ⧉i/n best window) and the text to show."""
    mark = "[green]✔[/] " if row.answer else "  "
    scored, text = row.scored, row.text
    if scored.truncated:
        mark += f"[yellow]✂{scored.dropped_tokens + scored.query_dropped_tokens}[/] "
    chunk = scored.best_chunk
    if chunk is not None and chunk.count > 1:
        mark += f"[cyan]⧉{chunk.index + 1}/{chunk.count}[/] "
        text = "…" + text[chunk.start : chunk.end]
    return mark, text


def _label(row: DemoRow, width: int) -> str:
    mark, text = _marks(row)
    return mark + escape(elide(text, width))


def _move(change: int) -> str:
    if change > 0:
        return f"[green]↑{change}[/]"
    if change < 0:
        return f"[red]↓{-change}[/]"
    return "[dim]·[/]"


WIDE = 120  # below this many columns the two orders are shown one above the other
LEGEND = (
    "[dim]✔ the answer · ✂N tokens cut to fit · ⧉i/n best window of a long passage · "
    "↑N/↓N places moved from BM25's order · bar: score 0..1[/]"
)


def _render(result: DemoResult, console: Console) -> None:
    if console.width >= WIDE:
        _render_side_by_side(result, console)
    else:
        _render_stacked(result, console)
    console.print(f"[dim]{result.latency_s * 1000:.0f} ms for {len(result.rows)} pairs[/]\n")


def _render_stacked(result: DemoResult, console: Console) -> None:
    """Narrow terminals: BM25's order, then the reranked order, one line per passage fitted to the width,
    so each passage shows as much text as the line holds and the keyword trap is visible."""
    console.print(f"[bold]{escape(result.query)}[/]")
    console.print("  [dim]BM25 order (keyword search)[/]")
    for first in result.bm25_order:
        mark, text = _marks(first)
        print_fitted(console, f"  {first.bm25_rank:>2} {mark}", text)
    console.print("  [dim]reranked order[/]")
    for row in result.rows:
        mark, text = _marks(row)
        head = f"  {row.rank:>2} {row.score:.3f} [green]{bar(row.score, 10)}[/] {_move(row.change):>3} {mark}"
        print_fitted(console, head, text)


def _render_side_by_side(result: DemoResult, console: Console) -> None:
    from rich import box

    table = Table(
        title=f"[bold]{escape(result.query)}[/]", title_justify="left", expand=True, box=box.SIMPLE_HEAD
    )
    table.add_column("#", justify="right", style="dim", min_width=1)
    table.add_column("BM25 order", overflow="ellipsis", no_wrap=True, ratio=1)
    table.add_column("reranked order", overflow="ellipsis", no_wrap=True, ratio=1)
    table.add_column("score", no_wrap=True, min_width=16)
    table.add_column("move", justify="right", min_width=4)
    for first, second in zip(result.bm25_order, result.rows, strict=True):
        table.add_row(
            str(second.rank),
            _label(first, 200),
            _label(second, 200),
            f"{second.score:.3f} [green]{bar(second.score, 10)}[/]",
            _move(second.change),
        )
    console.print(table)


def _render_timings(summary: DemoTimings, results: list[DemoResult], console: Console) -> None:
    record = _timings_record(summary, results)
    console.print(
        f"[bold]model[/] {escape(summary.model)}\n[bold]device[/] {summary.device}  "
        f"[bold]precision[/] {summary.dtype}\n"
        f"[bold]load[/] {summary.load_s:.1f} s  [bold]latency[/] {record['latency_ms_mean']:.0f} ms/query "
        f"(max {record['latency_ms_max']:.0f})  [bold]throughput[/] {summary.pairs_per_s:.1f} pairs/s"
    )
    answers_up = sum(1 for r in results if r.rows[0].answer)
    bm25_right = sum(1 for r in results if r.bm25_order[0].answer)
    console.print(
        f"answer ranked first: BM25 {bm25_right}/{len(results)}, reranker {answers_up}/{len(results)}"
    )
    console.print(LEGEND)
    if summary.random_weights:
        console.print(STAND_IN.format(model=escape(summary.model)))
