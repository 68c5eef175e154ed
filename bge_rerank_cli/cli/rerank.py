"""`bge-rerank rerank`: each query's candidates, best first."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Annotated

import typer

from ..config import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_MAX_CHUNKS,
    LoaderConfig,
    ScoreOptions,
)
from ..engine import JobControl, Scorer, rerank_stream
from ..errors import UsageError
from ..inputs import Rejected, SkipHook, inline_rerank_item, open_input, read_docs_file, rerank_items
from ..ir import load_candidates
from ..outputs import RERANK_TSV, render_rerank_tables, rerank_record, rerank_trec_lines, rerank_tsv_rows
from ..records import RerankItem, RerankResult
from . import common
from . import options as opt
from .job import JobSpec, RayOptions, Rendering, run_job, run_ray_job


@common.loader_options()
def rerank(
    config: LoaderConfig,
    input: Annotated[
        str | None,
        typer.Argument(help='JSONL file of {"query", "documents"} records; "-" or nothing reads stdin.'),
    ] = None,
    query: Annotated[str | None, typer.Option("--query", "-q", help="Rerank for this query inline.")] = None,
    doc: Annotated[
        list[str] | None, typer.Option("--doc", "-d", help="A candidate for --query (repeatable).")
    ] = None,
    docs_file: Annotated[
        str | None, typer.Option("--docs-file", help="Candidates for --query, one passage per line.")
    ] = None,
    run: Annotated[
        str | None,
        typer.Option(
            "--run",
            help="First-stage TREC run (qid Q0 docid rank score tag); needs --corpus and --queries.",
            rich_help_panel="First stage",
        ),
    ] = None,
    corpus: Annotated[
        str | None,
        typer.Option(
            help="BEIR corpus.jsonl (_id, title, text) holding the run's documents.",
            rich_help_panel="First stage",
        ),
    ] = None,
    queries: Annotated[
        str | None,
        typer.Option(
            help="BEIR queries.jsonl (_id, text) or qid<TAB>text lines.", rich_help_panel="First stage"
        ),
    ] = None,
    depth: Annotated[
        int | None,
        typer.Option(min=1, help="Keep the first-stage top K per query.", rich_help_panel="First stage"),
    ] = None,
    top_k: Annotated[
        int | None, typer.Option("--top-k", "-k", min=1, help="Keep the best N per query.")
    ] = None,
    min_score: Annotated[
        float | None,
        typer.Option("--min-score", min=0.0, max=1.0, help="Drop results scoring below X (0..1)."),
    ] = None,
    long_docs: opt.LongDocs = "truncate",
    chunk_overlap: opt.ChunkOverlap = DEFAULT_CHUNK_OVERLAP,
    max_chunks: opt.MaxChunks = DEFAULT_MAX_CHUNKS,
    fmt: opt.Format = "auto",
    output: opt.Output = None,
    on_error: opt.OnError = "fail",
    errors: opt.ErrorsFile = None,
    resume: opt.Resume = False,
    quiet: opt.Quiet = False,
    engine: opt.Engine = "local",
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
    """
    with common.reported_errors():
        common.check_format(fmt)
        options = ScoreOptions(long_docs, chunk_overlap, max_chunks)  # type: ignore[arg-type]  # validated
        spec = JobSpec(fmt, output, errors, on_error, resume, quiet, "queries")  # type: ignore[arg-type]
        if engine not in ("local", "ray"):
            raise UsageError(f"--engine must be local or ray, got {engine!r}.")
        if engine == "ray":
            ray_options = RayOptions(engine, ray_address, actors, gpus_per_actor, cpus_per_actor)
            run_ray_job("rerank", config, options, spec, ray_options, input, top_k=top_k, min_score=min_score)
            return
        stream = _stream(options, top_k, min_score)
        if run is not None or corpus is not None or queries is not None:
            if run is None or corpus is None or queries is None or input is not None or query is not None:
                raise UsageError("--run needs --corpus and --queries, and no input file or --query.")
            _, items = load_candidates(run, corpus, queries, depth)
            run_job(config, options, spec, run, lambda skip, verify: items[skip:], stream, RENDERING)
            return
        if depth is not None:
            raise UsageError("--depth applies to --run input.")
        if query is not None or doc or docs_file is not None:
            if input is not None:
                raise UsageError("give either an input file or --query with --doc/--docs-file, not both.")
            if query is None:
                raise UsageError("--doc and --docs-file need --query.")
            docs = list(doc or []) + (read_docs_file(docs_file) if docs_file else [])
            items = [inline_rerank_item(query, docs)]
            run_job(
                config, options, spec, "<arguments>", lambda skip, verify: items[skip:], stream, RENDERING
            )
            return
        with open_input(input, "rerank") as (source_stream, source):

            def records(skip: int, verify: SkipHook) -> Iterable[RerankItem | Rejected]:
                return rerank_items(source_stream, source, skip_through=skip, on_skipped=verify)

            run_job(config, options, spec, source, records, stream, RENDERING)


RENDERING: Rendering[RerankResult] = Rendering(
    to_json=rerank_record,
    tsv_columns=RERANK_TSV,
    to_tsv=rerank_tsv_rows,
    render=render_rerank_tables,
    line_of=lambda result: result.line,
    to_trec=rerank_trec_lines,
)


def _stream(
    options: ScoreOptions, top_k: int | None, min_score: float | None
) -> Callable[[Scorer, Iterable[RerankItem], JobControl], Iterator[list[RerankResult]]]:
    def stream(
        scorer: Scorer, items: Iterable[RerankItem], control: JobControl
    ) -> Iterator[list[RerankResult]]:
        return rerank_stream(
            scorer, items, top_k=top_k, min_score=min_score, options=options, control=control
        )

    return stream
