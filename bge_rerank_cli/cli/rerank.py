"""`bge-rerank rerank`: each query's candidates, best first."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import LoaderConfig
from ..errors import UsageError
from ..inputs import inline_rerank_item, read_docs_file
from ..jobs import ItemsSource, RerankTask, Source, TrecSource
from . import options as opt
from .batch import BatchOptions, batch_options, jsonl_source, run_batch
from .exits import reported_errors
from .scale import run_ray
from .views import render_rerank_tables

FIRST = "First stage"


@opt.loader_options()
@batch_options()
def rerank(
    config: LoaderConfig,
    batch: BatchOptions,
    input: Annotated[
        str | None,
        typer.Argument(
            metavar="INPUT",
            show_default=False,
            help='JSONL file of {"query", "documents"} records; "-" or nothing reads stdin.',
        ),
    ] = None,
    query: Annotated[
        str | None,
        typer.Option(
            "--query", "-q", metavar="TEXT", help="Rerank for this query inline.", rich_help_panel=opt.INPUT
        ),
    ] = None,
    doc: Annotated[
        list[str] | None,
        typer.Option(
            "--doc",
            "-d",
            metavar="TEXT",
            help="A candidate for --query (repeatable).",
            rich_help_panel=opt.INPUT,
        ),
    ] = None,
    docs_file: Annotated[
        str | None,
        typer.Option(
            "--docs-file",
            metavar="FILE",
            help="Candidates for --query, one passage per line.",
            rich_help_panel=opt.INPUT,
        ),
    ] = None,
    run: Annotated[
        str | None,
        typer.Option(
            "--run",
            metavar="FILE",
            help="First-stage TREC run (qid Q0 docid rank score tag); needs --corpus and --queries.",
            rich_help_panel=FIRST,
        ),
    ] = None,
    corpus: Annotated[
        str | None,
        typer.Option(
            help="BEIR corpus.jsonl (_id, title, text) holding the run's documents.", rich_help_panel=FIRST
        ),
    ] = None,
    queries: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="BEIR queries.jsonl (_id, text) or qid<TAB>text lines.",
            rich_help_panel=FIRST,
        ),
    ] = None,
    depth: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Rerank only the first K candidates of each query (input order).",
            rich_help_panel=FIRST,
        ),
    ] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", "-k", min=1, help="Keep the best N per query.")
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option("--min-score", min=0.0, max=1.0, help="Drop results scoring below X (0..1)."),
    ] = None,
) -> None:
    """Rerank each query's candidate documents by relevance.

    Input records hold "query" and "documents" (or candidates, passages, docs); each document is a string or an object with "text" and any other fields, which are kept. Output: the record with "results" = [{"index", "rank", "score", "logit", "truncated", "dropped_tokens", "text", ...}], best first.

    \b
    Examples:
      bge-rerank rerank candidates.jsonl --top-k 10
      my-retriever | bge-rerank rerank --format jsonl | jq '.results[0]'
      bge-rerank rerank -q "how do I read JSON in Python?" -d "json.load(f)" -d "pd.read_csv(path)"
      bge-rerank rerank -q "deep learning" --docs-file passages.txt
      bge-rerank rerank --run bm25.run --corpus corpus.jsonl --queries queries.jsonl -f trec
    """
    with reported_errors():
        task = RerankTask(batch.options, top_k, min_score, depth)
        if batch.ray is not None:
            run_ray(task, config, batch.flags, batch.ray, input, batch.cache_spec)
            return
        if run is not None or corpus is not None or queries is not None:
            if run is None or corpus is None or queries is None or input is not None or query is not None:
                raise UsageError("--run needs --corpus and --queries, and no input file or --query.")
            source: Source = TrecSource(run, corpus, queries, depth)
            task = RerankTask(task.options, top_k, min_score)  # the source keeps the first-stage top K
        elif query is not None or doc or docs_file is not None:
            if input is not None:
                raise UsageError("give either an input file or --query with --doc/--docs-file, not both.")
            if query is None:
                raise UsageError("--doc and --docs-file need --query.")
            docs = list(doc or []) + (read_docs_file(docs_file) if docs_file else [])
            source = ItemsSource([inline_rerank_item(query, docs)])
        else:
            source = jsonl_source(input, "rerank")
        run_batch(config, batch.flags, source, task, render_rerank_tables, batch.cache)
