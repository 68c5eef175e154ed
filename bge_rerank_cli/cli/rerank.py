"""`bge-rerank rerank`: each query's candidates, best first."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import DEFAULT_CHUNK_OVERLAP, DEFAULT_MAX_CHUNKS, LoaderConfig, LongDocs, ScoreOptions
from ..errors import UsageError
from ..inputs import inline_rerank_item, read_docs_file
from ..jobs import ItemsSource, OnError, RerankTask, Source, TrecSource
from . import options as opt
from .batch import OutputFlags, jsonl_source, run_batch
from .exits import reported_errors
from .scale import RayOptions, run_ray
from .views import render_rerank_tables

FIRST = "First stage"


@opt.loader_options()
def rerank(
    config: LoaderConfig,
    input: Annotated[
        str | None,
        typer.Argument(
            metavar="[INPUT]",
            show_default=False,
            help='JSONL file of {"query", "documents"} records; "-" or nothing reads stdin.',
        ),
    ] = None,
    query: Annotated[
        str | None, typer.Option("--query", "-q", metavar="TEXT", help="Rerank for this query inline.")
    ] = None,
    doc: Annotated[
        list[str] | None,
        typer.Option("--doc", "-d", metavar="TEXT", help="A candidate for --query (repeatable)."),
    ] = None,
    docs_file: Annotated[
        str | None,
        typer.Option("--docs-file", metavar="FILE", help="Candidates for --query, one passage per line."),
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
    long_docs: opt.LongDocsOption = LongDocs.TRUNCATE,
    chunk_overlap: opt.ChunkOverlap = DEFAULT_CHUNK_OVERLAP,
    max_chunks: opt.MaxChunks = DEFAULT_MAX_CHUNKS,
    fmt: opt.FormatOption = opt.Format.AUTO,
    output: opt.Output = None,
    on_error: opt.OnErrorOption = OnError.FAIL,
    errors: opt.ErrorsFile = None,
    resume: opt.Resume = False,
    quiet: opt.Quiet = False,
    engine: opt.EngineOption = opt.Engine.LOCAL,
    ray_address: opt.RayAddress = None,
    actors: opt.Actors = 1,
    gpus_per_actor: opt.GpusPerActor = None,
    cpus_per_actor: opt.CpusPerActor = 1.0,
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
        task = RerankTask(ScoreOptions(long_docs, chunk_overlap, max_chunks), top_k, min_score, depth)
        flags = OutputFlags(fmt, output, errors, on_error, resume, quiet)
        if engine == "ray":
            run_ray(
                task, config, flags, RayOptions(ray_address, actors, gpus_per_actor, cpus_per_actor), input
            )
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
        run_batch(config, flags, source, task, render_rerank_tables)
