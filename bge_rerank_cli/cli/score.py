"""`bge-rerank score`: one score per (query, passage) pair, records in input order."""

from __future__ import annotations

from typing import Annotated

import typer

from ..config import LoaderConfig
from ..errors import UsageError
from ..inputs import inline_score_items
from ..jobs import ItemsSource, ScoreTask, Source
from . import options as opt
from .batch import BatchOptions, batch_options, jsonl_source, run_batch
from .exits import reported_errors
from .scale import run_ray
from .views import render_score_table


@opt.loader_options()
@batch_options(ranked=False)
def score(
    config: LoaderConfig,
    batch: BatchOptions,
    input: Annotated[
        str | None,
        typer.Argument(
            metavar="INPUT",
            show_default=False,
            help='JSONL file of {"query", "passage"} records; "-" or nothing reads stdin.',
        ),
    ] = None,
    query: Annotated[
        str | None,
        typer.Option(
            "--query", "-q", metavar="TEXT", help="Score this query inline.", rich_help_panel=opt.INPUT
        ),
    ] = None,
    passage: Annotated[
        list[str] | None,
        typer.Option(
            "--passage",
            "-p",
            metavar="TEXT",
            help="A passage for --query (repeatable).",
            rich_help_panel=opt.INPUT,
        ),
    ] = None,
) -> None:
    """Score (query, passage) pairs.

    Every input record comes back with its fields unchanged plus "score" (sigmoid, 0..1), "logit" (raw), "truncated" and "dropped_tokens" (passage tokens cut by --max-length). Passage fields accepted: passage, document, text, doc.

    \b
    Examples:
      bge-rerank score pairs.jsonl
      cat pairs.jsonl | bge-rerank score --format jsonl > scored.jsonl
      bge-rerank score -q "what is deep learning?" -p "Deep learning is ..." -p "Apples are ..."
    """
    with reported_errors():
        task = ScoreTask(batch.options)
        if batch.ray is not None:
            run_ray(task, config, batch.flags, batch.ray, input, batch.cache_spec)
            return
        if query is not None or passage:
            if input is not None:
                raise UsageError("give either an input file or --query/--passage, not both.")
            if query is None or not passage:
                raise UsageError("inline scoring needs --query and at least one --passage.")
            source: Source = ItemsSource(inline_score_items(query, passage))
        else:
            source = jsonl_source(input, "score")
        run_batch(config, batch.flags, source, task, render_score_table, batch.cache)
