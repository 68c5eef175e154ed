"""`bge-rerank eval`: what reranking buys on your own judged data, before and after."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..config import LoaderConfig, ScoreOptions
from ..errors import UsageError
from ..ir import compare, first_stage_run, read_qrels, read_ranked, run_from_items, run_from_results
from ..jobs import Job, JsonlSource, Output, RerankTask, Source, TrecSource, beir_paths, read_all
from ..jobs import run as run_job
from ..plots import QueryChange, draw_eval, plot_format, query_changes
from . import console
from . import options as opt
from .exits import reported_errors
from .views import STAND_IN, render_query_changes

FIRST = "First stage and judgements"


@opt.loader_options()
@opt.long_docs_options()
def eval_(
    config: LoaderConfig,
    options: ScoreOptions,
    qrels: Annotated[
        str | None,
        typer.Option(
            metavar="FILE", help="Relevance judgements: TREC qrels or BEIR qrels TSV.", rich_help_panel=FIRST
        ),
    ] = None,
    beir: Annotated[
        str | None,
        typer.Option(
            metavar="DIR",
            help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).",
            rich_help_panel=FIRST,
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="BEIR qrels split.", rich_help_panel=FIRST)] = "test",
    run: Annotated[
        str | None,
        typer.Option("--run", metavar="FILE", help="First-stage TREC run to rerank.", rich_help_panel=FIRST),
    ] = None,
    corpus: Annotated[
        str | None, typer.Option(metavar="FILE", help="Corpus (BEIR corpus.jsonl).", rich_help_panel=FIRST)
    ] = None,
    queries: Annotated[
        str | None, typer.Option(metavar="FILE", help="Queries (BEIR queries.jsonl).", rich_help_panel=FIRST)
    ] = None,
    candidates: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="First stage as rerank JSONL (qid, documents with id), in first-stage order.",
            rich_help_panel=FIRST,
        ),
    ] = None,
    depth: Annotated[
        int | None, typer.Option(min=1, help="First-stage top K per query.", rich_help_panel=FIRST)
    ] = None,
    reranked: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Evaluate this reranked run (TREC or rerank JSONL) instead of running the model.",
        ),
    ] = None,
    per_query: Annotated[
        bool,
        typer.Option(
            "--per-query",
            help="Show each query's before/after values (in JSON: per_query, with top1_replaced).",
        ),
    ] = False,
    plot: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Also draw each query's nDCG@10 before and after as a picture: FILE.png or FILE.svg. "
            "Needs pip install 'bge-rerank-cli[plot]'.",
        ),
    ] = None,
    fmt: opt.ReportFormatOption = opt.ReportFormat.AUTO,
    quiet: opt.Quiet = False,
    score_cache: opt.ScoreCacheOption = None,
    score_cache_max_size: opt.ScoreCacheMaxSize = None,
) -> None:
    """Measure the reranker on judged data: nDCG@10, MRR@10, Recall@10/100 and MAP before and after.

    First-stage candidates come from a TREC run with a corpus and queries (--run with --corpus/--queries, or --run with --beir DIR), or from rerank JSONL (--candidates). The model reranks them, unless --reranked gives a run already reranked; with --score-cache, a rerun scores only the pairs it has not scored before. Also reported: the top-1 replacement rate (how often reranking changes the first result), the mean absolute rank shift, and latency per query. Metrics come from ir-measures (trec_eval).

    \b
    Examples:
      bge-rerank eval --beir sample_data/beir-sample --run sample_data/beir-sample/bm25.run
      bge-rerank eval --qrels qrels.txt --run bm25.run --corpus corpus.jsonl --queries queries.jsonl --per-query
      bge-rerank eval --beir sample_data/beir-sample --run sample_data/beir-sample/bm25.run --plot eval.svg
    """
    with reported_errors():
        if plot is not None:
            plot_format(plot)  # a wrong suffix or no matplotlib fails now, not after the scoring
        task = RerankTask(options)
        if beir:
            paths = [str(p) for p in beir_paths(beir, split)]
            corpus, queries, qrels = corpus or paths[0], queries or paths[1], qrels or paths[2]
        if qrels is None:
            raise UsageError("give --qrels (or --beir DIR with its qrels/<split>.tsv).")
        judgements = read_qrels(qrels)
        source = _first_stage(run, corpus, queries, candidates, depth)
        if candidates is not None and depth:
            task = RerankTask(task.options, depth=depth)
        latency, made_with, cached = None, None, None
        if reranked is not None:
            before = run_from_items(read_all(source, task))
            after = read_ranked(reranked)
        else:
            store = opt.open_score_cache(score_cache, score_cache_max_size)
            try:
                with console.progress(quiet) as advance:
                    report = run_job(Job(source, task, Output(format="rows")), console.loader(config, quiet),
                                     config=config, progress=advance, cache=store)  # fmt: skip
            finally:
                if store is not None:
                    store.close()
            if store is not None:
                cached = _cache_report(store.where, report.stats.cache_hits, report.stats.cache_misses,
                                       report.model_loaded)  # fmt: skip
            results = report.rows or []
            latency = report.scoring_seconds / max(len(results), 1)
            before, after = first_stage_run(results), run_from_results(results)
            made_with = _made_with(report.scorer, config)
            if made_with["random_weights"]:  # said even with --quiet: these figures mean nothing
                console.say(STAND_IN.format(model=escape(str(made_with["name"]))))
        summary = compare(judgements, before, after, latency, per_query=True)
        changes = query_changes(summary["per_query"])
        if not per_query:
            del summary["per_query"]
        if made_with is not None:
            summary = {"model": made_with, **summary}
        if cached is not None:
            summary["score_cache"] = cached
        if plot is not None:
            _draw(changes, plot, made_with, reranked, quiet)
        if fmt == "json" or (fmt == "auto" and not sys.stdout.isatty()):
            sys.stdout.buffer.write(
                orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
            )
        else:
            _render(summary, changes, console.out_console())


def _draw(
    changes: list[QueryChange], path: str, made_with: dict[str, Any] | None, reranked: str | None, quiet: bool
) -> None:
    made_by = f"model {made_with['name']}" if made_with is not None else f"reranked run {reranked}"
    random = bool(made_with and made_with["random_weights"])
    written = draw_eval(changes, path, made_by=made_by, random_weights=random)
    if not quiet:
        console.say(f"plot written to {escape(str(written))}")


def _cache_report(where: str, hits: int, misses: int, model_loaded: bool) -> dict[str, Any]:
    """The score cache's part of the report: where it is (no secrets), the distinct pairs it knew and not,
    and whether the model had to be loaded (not when the cache knew every pair)."""
    from ..score_cache_common import hit_rate

    return {"where": where, "hits": hits, "misses": misses, "hit_rate": hit_rate(hits, misses),
            "model_loaded": model_loaded}  # fmt: skip


def _made_with(described: dict[str, Any], config: LoaderConfig) -> dict[str, Any]:
    """What scored the run, for the report: model and revision, backend, device, dtype, max length, and
    whether the weights are a random stand-in."""
    fields = ("backend", "device", "dtype", "max_length", "template")
    return {"name": described.get("model", config.model), "revision": config.revision,
            **{k: described[k] for k in fields if k in described},
            "random_weights": bool(described.get("random_weights"))}  # fmt: skip


def _first_stage(
    run: str | None, corpus: str | None, queries: str | None, candidates: str | None, depth: int | None
) -> Source:
    if run is not None:
        if candidates is not None:
            raise UsageError("give --run or --candidates, not both.")
        if corpus is None or queries is None:
            raise UsageError("--run needs --corpus and --queries (or --beir DIR).")
        return TrecSource(run, corpus, queries, depth)
    if candidates is not None:
        return JsonlSource(candidates)
    raise UsageError("give the first stage: --run (with --corpus/--queries or --beir) or --candidates.")


def _render(report: dict[str, Any], changes: list[QueryChange], console: Console) -> None:
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
    cache = report.get("score_cache")
    if cache is not None:
        from ..score_cache_common import known_line

        console.print(
            f"score cache {escape(cache['where'])}: {known_line(cache['hits'], cache['misses'])}"
            + ("" if cache.get("model_loaded", True) else " (the model was not loaded)"),
            soft_wrap=True,  # a long path is not folded
        )
    console.print()
    render_query_changes(changes, console)
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
