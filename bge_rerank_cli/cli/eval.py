"""`bge-rerank eval`: what reranking buys on your own judged data, before and after."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from ..config import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_MAX_CHUNKS,
    LoaderConfig,
    ScoreOptions,
)
from ..engine import JobControl, rerank_stream
from ..errors import UsageError
from ..inputs import open_input, rerank_items
from ..ir import (
    LABELS,
    MEASURES,
    Run,
    beir_paths,
    load_candidates,
    measure,
    rank_changes,
    read_qrels,
    read_ranked,
    run_from_items,
    run_from_results,
)
from ..jobs import Intake
from ..records import RerankItem
from . import common
from . import options as opt

FIRST = "First stage and judgements"


@common.loader_options()
def eval_(
    config: LoaderConfig,
    qrels: Annotated[
        str | None,
        typer.Option(help="Relevance judgements: TREC qrels or BEIR qrels TSV.", rich_help_panel=FIRST),
    ] = None,
    beir: Annotated[
        str | None,
        typer.Option(
            help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).", rich_help_panel=FIRST
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="BEIR qrels split.", rich_help_panel=FIRST)] = "test",
    run: Annotated[
        str | None, typer.Option("--run", help="First-stage TREC run to rerank.", rich_help_panel=FIRST)
    ] = None,
    corpus: Annotated[
        str | None, typer.Option(help="Corpus (BEIR corpus.jsonl).", rich_help_panel=FIRST)
    ] = None,
    queries: Annotated[
        str | None, typer.Option(help="Queries (BEIR queries.jsonl).", rich_help_panel=FIRST)
    ] = None,
    candidates: Annotated[
        str | None,
        typer.Option(
            help="First stage as rerank JSONL (qid, documents with id), in first-stage order.",
            rich_help_panel=FIRST,
        ),
    ] = None,
    depth: Annotated[
        int | None, typer.Option(min=1, help="First-stage top K per query.", rich_help_panel=FIRST)
    ] = None,
    reranked: Annotated[
        str | None,
        typer.Option(help="Evaluate this reranked run (TREC or rerank JSONL) instead of running the model."),
    ] = None,
    per_query: Annotated[
        bool, typer.Option("--per-query", help="Show each query's before/after values.")
    ] = False,
    long_docs: opt.LongDocs = "truncate",
    chunk_overlap: opt.ChunkOverlap = DEFAULT_CHUNK_OVERLAP,
    max_chunks: opt.MaxChunks = DEFAULT_MAX_CHUNKS,
    fmt: Annotated[
        str,
        typer.Option("--format", "-f", help="auto (table on a terminal, JSON when piped), table or json."),
    ] = "auto",
    quiet: opt.Quiet = False,
) -> None:
    """Measure the reranker on judged data: nDCG@10, MRR@10, Recall@10/100 and MAP before and after.

    First-stage candidates come from a TREC run with a corpus and queries (--run with --corpus/--queries, or --run with --beir DIR), or from rerank JSONL (--candidates). The model reranks them, unless --reranked gives a run already reranked. Also reported: the top-1 replacement rate (how often reranking changes the first result), the mean absolute rank shift, and latency per query. Metrics come from ir-measures (trec_eval).

    \b
    Examples:
      bge-rerank eval --beir sample_data/beir-sample --run sample_data/beir-sample/bm25.run
      bge-rerank eval --qrels qrels.txt --run bm25.run --corpus corpus.jsonl --queries queries.jsonl --per-query
    """
    with common.reported_errors():
        if fmt not in ("auto", "table", "json"):
            raise UsageError(f"--format must be auto, table or json, got {fmt!r}.")
        if beir:
            beir_corpus, beir_queries, beir_qrels = beir_paths(beir, split)
            corpus, queries, qrels = (
                corpus or str(beir_corpus),
                queries or str(beir_queries),
                qrels or str(beir_qrels),
            )
        if qrels is None:
            raise UsageError("give --qrels (or --beir DIR with its qrels/<split>.tsv).")
        judgements = read_qrels(qrels)
        before, items = _first_stage(run, corpus, queries, candidates, depth)
        latency = None
        if reranked is not None:
            after = read_ranked(reranked)
        else:
            options = ScoreOptions(long_docs, chunk_overlap, max_chunks)  # type: ignore[arg-type]  # validated
            scorer = common.load_model(config, quiet)
            started = time.perf_counter()
            with common.progress(quiet) as advance:
                control = JobControl(on_progress=advance)
                results = [
                    r
                    for chunk in rerank_stream(scorer, items, options=options, control=control)
                    for r in chunk
                ]
            latency = (time.perf_counter() - started) / max(len(results), 1)
            after = run_from_results(results)
        report = _report(judgements, before, after, latency, per_query)
        if fmt == "json" or (fmt == "auto" and not sys.stdout.isatty()):
            sys.stdout.buffer.write(
                orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
            )
        else:
            _render(report, Console(highlight=False))


def _first_stage(
    run: str | None, corpus: str | None, queries: str | None, candidates: str | None, depth: int | None
) -> tuple[Run, list[RerankItem]]:
    if run is not None:
        if candidates is not None:
            raise UsageError("give --run or --candidates, not both.")
        if corpus is None or queries is None:
            raise UsageError("--run needs --corpus and --queries (or --beir DIR).")
        return load_candidates(run, corpus, queries, depth)
    if candidates is not None:
        with open_input(candidates, "eval") as (stream, source):
            intake: Intake[RerankItem] = Intake(
                rerank_items(stream, source), on_error="fail", errors=None, source=source
            )
            items = list(intake)
            intake.raise_failure()
        if depth:
            items = [RerankItem(i.line, i.query, i.documents[:depth], i.record) for i in items]
        return run_from_items(items), items
    raise UsageError("give the first stage: --run (with --corpus/--queries or --beir) or --candidates.")


def _report(qrels: Any, before: Run, after: Run, latency: float | None, per_query: bool) -> dict[str, Any]:
    missing = sorted(set(before) - set(after))
    if missing:
        raise UsageError(f"the reranked run lacks {len(missing)} first-stage queries (e.g. {missing[0]}).")
    before_agg, before_q = measure(qrels, before)
    after_agg, after_q = measure(qrels, after)
    changes = rank_changes(before, after)
    report: dict[str, Any] = {
        "queries": len(after_q),
        "measures": {
            LABELS[m]: {"before": before_agg[m], "after": after_agg[m], "delta": after_agg[m] - before_agg[m]}
            for m in MEASURES
        },
        "top1_replacement_rate": changes.top1_replacement_rate,
        "top1_replaced": changes.top1_replaced,
        "mean_abs_rank_shift": changes.mean_abs_shift,
        "latency_ms_per_query": None if latency is None else latency * 1000,
    }
    if per_query:
        report["per_query"] = {
            qid: {
                LABELS[m]: {"before": before_q.get(qid, {}).get(m, 0.0), "after": values.get(m, 0.0)}
                for m in MEASURES
            }
            for qid, values in sorted(after_q.items())
        }
    return report


def _render(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"reranking on {report['queries']} judged queries", title_justify="left")
    table.add_column("measure")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_column("Δ", justify="right")
    for name, values in report["measures"].items():
        delta = values["delta"]
        colour = "green" if delta > 0 else "red" if delta < 0 else "dim"
        table.add_row(name, f"{values['before']:.4f}", f"{values['after']:.4f}", f"[{colour}]{delta:+.4f}[/]")
    console.print(table)
    latency = report["latency_ms_per_query"]
    console.print(
        f"top-1 replacement rate {report['top1_replacement_rate']:.0%} ({report['top1_replaced']} of "
        f"{report['queries']}); mean |rank shift| {report['mean_abs_rank_shift']:.2f}"
        + (f"; latency {latency:.0f} ms/query" if latency is not None else "")
    )
    if "per_query" in report:
        detail = Table(title="per query: nDCG@10 and MRR@10", title_justify="left")
        for col in ("query", "nDCG@10 before", "after", "Δ", "MRR@10 before", "after", "Δ"):
            detail.add_column(col, justify="left" if col == "query" else "right")
        for qid, values in report["per_query"].items():
            n, r = values["nDCG@10"], values["MRR@10"]
            detail.add_row(
                qid,
                f"{n['before']:.3f}",
                f"{n['after']:.3f}",
                f"{n['after'] - n['before']:+.3f}",
                f"{r['before']:.3f}",
                f"{r['after']:.3f}",
                f"{r['after'] - r['before']:+.3f}",
            )
        console.print(detail)
