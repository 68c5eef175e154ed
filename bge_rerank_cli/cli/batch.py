"""What `score` and `rerank` share: their output flags made into a job, the job run, the report shown.

The work itself (intake, scoring, writing, checkpoints, resume) is the library's
:func:`bge_rerank_cli.jobs.run`; this module parses, calls and renders.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ..config import LoaderConfig, ScoreOptions
from ..errors import UsageError
from ..jobs import Job, JsonlSource, OnError, Output, Report, Source, StopSwitch, Task, run
from . import console as term
from . import options as opt
from .exits import flag_name
from .views import STAND_IN

if TYPE_CHECKING:
    from ..score_cache import StoreSpec

T = TypeVar("T")


@dataclass(frozen=True)
class OutputFlags:
    """The output and long-job flags as given on the command line."""

    fmt: str
    output: str | None
    errors: str | None
    on_error: str
    resume: bool
    quiet: bool


@dataclass(frozen=True)
class RayOptions:
    address: str | None
    actors: int
    gpus_per_actor: float | None
    cpus_per_actor: float


@dataclass(frozen=True)
class BatchOptions:
    """What `score` and `rerank` share besides the model: long passages, output, long jobs, scale-out
    (``ray`` is ``None`` for the local engine)."""

    options: ScoreOptions
    flags: OutputFlags
    ray: RayOptions | None
    cache: Any = None  # the score cache's store (--score-cache), or None
    cache_spec: StoreSpec | None = None  # what --score-cache named, for Ray's actors to open


def _batch_options(
    *,
    long_docs: str,
    chunk_overlap: int,
    max_chunks: int,
    fmt: str,
    output: str | None,
    on_error: str,
    errors: str | None,
    resume: bool,
    quiet: bool,
    engine: str,
    ray_address: str | None,
    actors: int,
    gpus_per_actor: float | None,
    cpus_per_actor: float,
    score_cache: str | None,
    score_cache_max_size: str | None,
) -> BatchOptions:
    ray = RayOptions(ray_address, actors, gpus_per_actor, cpus_per_actor) if engine == "ray" else None
    flags = OutputFlags(fmt, output, errors, on_error, resume, quiet)
    cache = opt.open_score_cache(score_cache, score_cache_max_size)
    spec = None
    if cache is not None:
        from ..score_cache import StoreSpec

        spec = StoreSpec.of(cache)
    return BatchOptions(ScoreOptions(long_docs, chunk_overlap, max_chunks), flags, ray, cache, spec)


def batch_options(*, ranked: bool = True) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Give `score` and `rerank` their shared options, declared once, as ``batch: BatchOptions``;
    ``ranked=False`` (`score`) offers the formats without ``trec``."""
    fmt: opt.Parameter = (
        ("fmt", opt.FormatOption, opt.Format.AUTO)
        if ranked
        else ("fmt", opt.ScoreFormatOption, opt.ScoreFormat.AUTO)
    )
    parameters: list[opt.Parameter] = [
        *opt.LONG_DOCS_PARAMETERS,
        fmt,
        ("output", opt.Output, None),
        ("on_error", opt.OnErrorOption, OnError.FAIL),
        ("errors", opt.ErrorsFile, None),
        ("resume", opt.Resume, False),
        ("quiet", opt.Quiet, False),
        ("engine", opt.EngineOption, opt.Engine.LOCAL),
        ("ray_address", opt.RayAddress, None),
        ("actors", opt.Actors, 1),
        ("gpus_per_actor", opt.GpusPerActor, None),
        ("cpus_per_actor", opt.CpusPerActor, 1.0),
        ("score_cache", opt.ScoreCacheOption, None),
        ("score_cache_max_size", opt.ScoreCacheMaxSize, None),
    ]
    return opt.shared_options(parameters, _batch_options, "batch")


def resolve_format(fmt: str, output: str | None) -> str:
    """``auto`` is a table on an interactive terminal and JSONL everywhere else (pipes, files)."""
    if fmt != "auto":
        return str(fmt)
    return "table" if output in (None, "-") and sys.stdout.isatty() else "jsonl"


Render = Callable[[list[Any], Console, bool], None]


def run_batch(
    config: LoaderConfig,
    flags: OutputFlags,
    source: Source,
    task: Task[Any, Any],
    render: Render,
    cache: Any = None,
) -> None:
    """Run one score/rerank job from the command line: stream it, or gather it for a table or chart."""
    fmt = resolve_format(flags.fmt, flags.output)
    view = fmt in ("table", "chart")
    if view and flags.resume:
        raise UsageError("--resume works with JSONL output (--format jsonl).")
    job = Job(
        source,
        task,
        Output(None if view else flags.output, "rows" if view else fmt, flags.errors),
        on_error=flags.on_error,
        resume=flags.resume,
    )
    switch = StopSwitch()
    with ExitStack() as stack:
        stack.enter_context(switch.installed())
        if cache is not None:
            stack.callback(cache.close)
        meter = stack.enter_context(term.job_progress(flags.quiet, source))
        report = run(
            job,
            term.loader(config, flags.quiet),
            config=config,
            stop=switch,
            progress=meter.advance if meter else None,
            position=meter.at_line if meter else None,
            cache=cache,
        )
    if view and report.rows is not None:
        _render(report.rows, flags.output, render, fmt == "chart")
    if report.stopped:
        _stopped(report, switch, job)
    if not flags.quiet:
        summarise(report, config)
    elif report.scorer.get("random_weights"):  # said even with --quiet: these scores mean nothing
        term.say(STAND_IN.format(model=escape(str(report.scorer.get("model")))))


def _render(rows: list[Any], output: str | None, render: Render, chart: bool) -> None:
    if output in (None, "-"):
        render(rows, term.out_console(), chart)
        return
    try:
        with open(str(output), "w", encoding="utf-8") as handle:
            render(rows, term.out_console(file=handle), chart)
    except OSError as exc:
        raise UsageError(f"cannot write -o {output}: {exc.strerror}.") from None


def _stopped(report: Report, switch: StopSwitch, job: Job) -> None:
    name = "SIGTERM" if switch.exit_code == 143 else "SIGINT"
    where = f"in {report.output}" if report.output else "on stdout"
    term.say(
        f"[yellow]stopped[/] by {name} after {report.seconds:.1f}s: {report.written} records {where}, "
        f"input accounted for up to line {report.last_line}."
    )
    if report.output and job.output.format == "jsonl":
        argv = [a for a in sys.argv[1:] if a != "--resume"]
        term.say(f"resume with: {shlex.join(['bge-rerank', *argv, '--resume'])}")
    raise typer.Exit(switch.exit_code)


def summarise(report: Report, config: LoaderConfig) -> None:
    """The end-of-job lines on stderr: counts, speed, top-1 replacement, truncation advice."""
    if report.accepted == 0 and not report.skipped and not report.resumed_after:
        lines = f" ({report.read} blank lines)" if report.read else ""
        term.say(f"[yellow]warning:[/] no records in the input{lines}; nothing to do.")
        return
    parts = [f"read {_counted(report.read, 'lines')}", f"wrote {_counted(report.written, report.unit)}"]
    if report.resumed_after:  # both sides count this run's work; the file's total follows
        now = _counted(report.written - report.resumed_written, report.unit)
        parts = [f"resumed after line {report.resumed_after}: read {_counted(report.read, 'more lines')}",
                 f"wrote {now} ({report.written} in {report.output})"]  # fmt: skip
    if report.skipped:
        parts.append(f"skipped {report.skipped}" + (f" (see {report.errors})" if report.errors else ""))
    if report.blank:
        parts.append(f"{report.blank} blank")
    line = ", ".join(parts) + f" in {report.seconds:.1f}s"
    stats = report.stats
    if stats.pairs:
        line += f"; {_counted(stats.pairs, 'pairs')} scored at {report.pairs_per_second:.1f}/s"
        if stats.unique_pairs < stats.pairs:
            line += f", {stats.pairs - stats.unique_pairs} duplicates scored once"
        if stats.windowed:
            line += f", {stats.windowed} long passages in {stats.sequences} windows"
        if stats.cache_hits or stats.cache_misses:
            from ..score_cache_common import known_line

            line += f"; score cache: {known_line(stats.cache_hits, stats.cache_misses)}"
            if not report.model_loaded:
                line += " (the model was not loaded)"
        if stats.cache_failed is not None:
            line += "; score cache " + ("off part-way" if stats.cache_hits or stats.cache_misses else "off")
            line += " after it failed (see the warning)"
    if report.max_length is not None:  # the effective length: the request, clamped to the model once
        clamped = " (the model's limit)" if report.max_length != config.max_length else ""
        line += f"; max length {report.max_length}{clamped}"
    term.say(f"[dim]{line}[/]")
    if report.top1_replacement_rate is not None:
        term.say(
            f"[dim]top-1 replaced in {stats.top1_replaced} of {stats.queries} queries "
            f"({report.top1_replacement_rate:.0%}); latency {report.ms_per_query:.0f} ms/query[/]"
        )
    if stats.truncated:
        term.say(truncation_advice(report))
    if report.scorer.get("random_weights"):
        term.say(STAND_IN.format(model=escape(str(report.scorer.get("model")))))


def _counted(n: int, unit: str) -> str:
    """``n`` and its unit, singular for 1 (``lines``/``line``, ``records``/``record``, ``queries``/``query``)."""
    return f"{n} {unit if n != 1 else unit.removesuffix('s').replace('querie', 'query')}"


def truncation_advice(report: Report) -> str:
    stats = report.stats
    share = stats.truncated / max(stats.pairs, 1)
    length = report.max_length
    if report.options.long_docs == "chunk":
        advice = "raise --max-length or --max-chunks"
    elif length is not None and report.model_limit is not None and length < report.model_limit:
        advice = f"raise --max-length ({report.scorer.get('model', 'the model')} takes up to {report.model_limit}) or use --long-docs chunk"
    else:
        advice = "use --long-docs chunk (the model takes no more tokens)"
    level = "warning" if share >= 0.05 else "note"
    return (
        f"[yellow]{level}:[/] {stats.truncated} of {stats.pairs} pairs ({share:.0%}) did not fit "
        f"{flag_name('max_length', length)} and lost tokens (see truncated/dropped_tokens); {advice}."
    )


def jsonl_source(path: str | None, command: str) -> JsonlSource:
    """The input file, or stdin; refuses to wait on an interactive terminal with nothing piped in."""
    if path is None and sys.stdin.isatty():
        raise UsageError(
            "no input: give a JSONL file, pipe one in, or use inline flags.",
            hint=f"Example: bge-rerank {command} input.jsonl  (see `bge-rerank {command} --help`).",
        )
    return JsonlSource(path)
