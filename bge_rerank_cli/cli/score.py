"""`bge-rerank score`: one score per (query, passage) pair, records in input order."""

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
from ..engine import JobControl, Scorer, score_stream
from ..errors import UsageError
from ..inputs import Rejected, SkipHook, inline_score_items, open_input, score_items
from ..outputs import SCORE_TSV, render_score_table, score_record, score_tsv_row
from ..records import Scored, ScoreItem
from . import common
from . import options as opt
from .job import JobSpec, RayOptions, Rendering, run_job, run_ray_job


@common.loader_options()
def score(
    config: LoaderConfig,
    input: Annotated[
        str | None,
        typer.Argument(help='JSONL file of {"query", "passage"} records; "-" or nothing reads stdin.'),
    ] = None,
    query: Annotated[str | None, typer.Option("--query", "-q", help="Score this query inline.")] = None,
    passage: Annotated[
        list[str] | None, typer.Option("--passage", "-p", help="A passage for --query (repeatable).")
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
    """Score (query, passage) pairs.

    Every input record comes back with its fields unchanged plus "score" (sigmoid, 0..1), "logit" (raw), "truncated" and "dropped_tokens" (passage tokens cut by --max-length). Passage fields accepted: passage, document, text, doc.

    \b
    Examples:
      bge-rerank score pairs.jsonl
      cat pairs.jsonl | bge-rerank score --format jsonl > scored.jsonl
      bge-rerank score -q "what is deep learning?" -p "Deep learning is ..." -p "Apples are ..."
    """
    with common.reported_errors():
        common.check_format(fmt)
        options = ScoreOptions(long_docs, chunk_overlap, max_chunks)  # type: ignore[arg-type]  # validated
        spec = JobSpec(fmt, output, errors, on_error, resume, quiet, "records")  # type: ignore[arg-type]
        if engine not in ("local", "ray"):
            raise UsageError(f"--engine must be local or ray, got {engine!r}.")
        if engine == "ray":
            ray_options = RayOptions(engine, ray_address, actors, gpus_per_actor, cpus_per_actor)
            run_ray_job("score", config, options, spec, ray_options, input)
            return
        if query is not None or passage:
            if input is not None:
                raise UsageError("give either an input file or --query/--passage, not both.")
            if query is None or not passage:
                raise UsageError("inline scoring needs --query and at least one --passage.")
            items = inline_score_items(query, passage)
            run_job(
                config,
                options,
                spec,
                "<arguments>",
                lambda skip, verify: items[skip:],
                _stream(options),
                RENDERING,
            )
            return
        with open_input(input, "score") as (stream, source):

            def records(skip: int, verify: SkipHook) -> Iterable[ScoreItem | Rejected]:
                return score_items(stream, source, skip_through=skip, on_skipped=verify)

            run_job(config, options, spec, source, records, _stream(options), RENDERING)


Row = tuple[ScoreItem, Scored]
RENDERING: Rendering[Row] = Rendering(
    to_json=lambda row: score_record(*row),
    tsv_columns=SCORE_TSV,
    to_tsv=lambda row: [score_tsv_row(*row)],
    render=render_score_table,
    line_of=lambda row: row[0].line,
)


def _stream(
    options: ScoreOptions,
) -> Callable[[Scorer, Iterable[ScoreItem], JobControl], Iterator[list[Row]]]:
    return lambda scorer, items, control: score_stream(scorer, items, options=options, control=control)
