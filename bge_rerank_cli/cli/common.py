"""What every command shares: the stderr console, error mapping, config building, progress, output."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, BinaryIO, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ..config import LoaderConfig, ScoreOptions
from ..engine import RunStats
from ..errors import BgeRerankError, ExitCode, UsageError
from ..outputs import FORMATS, JsonlWriter, TsvWriter, resolve_format

T = TypeVar("T")

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def debug_enabled() -> bool:
    return os.environ.get("BGE_RERANK_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def say(message: str) -> None:
    """A message for people, on stderr."""
    err_console.print(message)


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno >= logging.WARNING else "note"
        err_console.print(f"[yellow]{level}:[/] {escape(record.getMessage())}")


def setup_logging() -> None:
    logger = logging.getLogger("bge_rerank_cli")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.DEBUG if debug_enabled() else logging.INFO)
    logger.propagate = False


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn domain errors into one stderr line and an exit code; tracebacks only with BGE_RERANK_DEBUG=1."""
    setup_logging()
    try:
        yield
    except BgeRerankError as exc:
        if debug_enabled():
            raise
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as `yes | head` does.
        _silence_stdout()
        raise typer.Exit(141) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if debug_enabled():
            raise
        err_console.print(
            f"[red]error:[/] unexpected {type(exc).__name__}: {escape(str(exc))} "
            "(this is a bug in bge-rerank; rerun with BGE_RERANK_DEBUG=1 for the traceback and report it)"
        )
        raise typer.Exit(int(ExitCode.FAILURE)) from None


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def build_config(
    *,
    model: str,
    device: str,
    fp16: bool | None,
    dtype: str,
    max_length: int,
    batch_size: int,
    offline: bool,
    cache_dir: str | None,
    revision: str | None,
    trust_remote_code: bool,
) -> LoaderConfig:
    if fp16 is not None:
        wanted = "fp16" if fp16 else "fp32"
        if dtype not in ("auto", wanted):
            raise UsageError(
                f"--{'no-' if not fp16 else ''}fp16 contradicts --dtype {dtype}; give one of them."
            )
        dtype = wanted
    return LoaderConfig(
        model=model,
        device=device,
        dtype=dtype,  # type: ignore[arg-type]  # validated by LoaderConfig
        max_length=max_length,
        batch_size=batch_size,
        offline=offline,
        cache_dir=cache_dir,
        revision=revision,
        trust_remote_code=trust_remote_code,
    )


def load_model(config: LoaderConfig, quiet: bool) -> Any:
    """Load the scorer (the only place commands touch the loader), with a status line on a terminal."""
    from ..loader import load_scorer

    if quiet or not err_console.is_terminal:
        return load_scorer(config)
    with err_console.status(f"loading {escape(config.model)} …", spinner="dots"):
        return load_scorer(config)


def peek(items: Iterable[T]) -> tuple[T | None, Iterator[T]]:
    """Read the first item (so bad input fails before the model loads) and give back the whole stream."""
    iterator = iter(items)
    first = next(iterator, None)
    if first is None:
        return None, iter(())

    def chained() -> Iterator[T]:
        yield first
        yield from iterator

    return first, chained()


@contextmanager
def progress(quiet: bool, unit: str = "pairs") -> Iterator[Callable[[int], None] | None]:
    """A Rich progress line on stderr (terminal only): pairs scored and rate. Yields an advance callback."""
    if quiet or not err_console.is_terminal:
        yield None
        return
    from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn(f"scoring {unit}"),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[rate]}"),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("score", total=None, rate="")
        started = time.perf_counter()
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            rate = done / max(time.perf_counter() - started, 1e-9)
            bar.update(task, advance=n, rate=f"{rate:,.1f} {unit}/s")

        yield advance


@contextmanager
def output_stream(path: str | None) -> Iterator[tuple[BinaryIO, IO[Any] | None]]:
    """Yield (binary stream, text file for Rich or None for stdout)."""
    if path is None or path == "-":
        yield sys.stdout.buffer, None
        return
    try:
        handle = open(path, "wb")  # noqa: SIM115  # closed below
    except OSError as exc:
        raise UsageError(f"cannot write --output {path}: {exc.strerror}.") from None
    with handle:
        yield handle, handle


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}.")


def emit(
    chunks: Iterable[list[T]],
    *,
    fmt: str,
    output: str | None,
    to_json: Callable[[T], dict[str, Any]],
    tsv_columns: tuple[str, ...],
    to_tsv: Callable[[T], list[dict[str, Any]]],
    render: Callable[[list[T], Console, bool], None],
) -> int:
    """Write results chunk by chunk (flushed after each) in the chosen format; return how many."""
    count = 0
    with output_stream(output) as (stream, text_file):
        fmt = resolve_format(fmt, text_file)
        if fmt in ("table", "chart"):
            rows = [row for chunk in chunks for row in chunk]
            console = (
                Console(file=_text_io(text_file), highlight=False) if text_file else Console(highlight=False)
            )
            render(rows, console, fmt == "chart")
            return len(rows)
        writer: JsonlWriter | TsvWriter = (
            JsonlWriter(stream) if fmt == "jsonl" else TsvWriter(stream, tsv_columns)
        )
        for chunk in chunks:
            for row in chunk:
                if fmt == "jsonl":
                    writer.write(to_json(row))
                else:
                    for tsv_row in to_tsv(row):
                        writer.write(tsv_row)
            writer.flush()
            count += len(chunk)
    return count


def _text_io(binary: IO[Any]) -> IO[str]:
    import io

    return io.TextIOWrapper(binary, encoding="utf-8", write_through=True)


def summary(count: int, unit: str, started: float, quiet: bool, stats: RunStats, options: ScoreOptions,
            max_length: int) -> None:  # fmt: skip
    """The end-of-run lines on stderr: how much was done, and what was truncated."""
    if quiet:
        return
    elapsed = time.perf_counter() - started
    rate = stats.pairs / elapsed if elapsed > 0 else 0.0
    line = f"{count} {unit}: {stats.pairs} pairs in {elapsed:.1f}s ({rate:.1f} pairs/s)"
    if stats.unique_pairs < stats.pairs:
        line += f", {stats.pairs - stats.unique_pairs} duplicates scored once"
    if stats.chunked:
        line += f", {stats.chunked} long passages scored in {stats.sequences} windows in all"
    say(f"[dim]{line}[/]")
    if stats.truncated:
        share = stats.truncated / max(stats.pairs, 1)
        advice = (
            "raise --max-length or --max-chunks" if options.long_docs == "chunk"
            else "raise --max-length (bge-reranker-v2-m3 takes up to 8192) or use --long-docs chunk"
        )  # fmt: skip
        level = "warning" if share >= 0.05 else "note"
        say(
            f"[yellow]{level}:[/] {stats.truncated} of {stats.pairs} pairs ({share:.0%}) did not fit "
            f"--max-length {max_length} and lost tokens (see truncated/dropped_tokens); {advice}."
        )


StreamFactory = Callable[[Any, Iterable[Any], "Callable[[int], None] | None", RunStats], Iterable[list[T]]]


def run_job(
    config: LoaderConfig,
    options: ScoreOptions,
    items: Iterable[Any],
    *,
    stream: StreamFactory[T],
    quiet: bool,
    unit: str,
    **emit_args: Any,
) -> None:
    """Shared body of score and rerank: check the first record, load the model, stream, summarise."""
    started = time.perf_counter()
    first, rest = peek(items)
    if first is None:
        say(f"[yellow]warning:[/] no records in the input; nothing to {unit.split()[-1]}.")
        return
    scorer = load_model(config, quiet)
    stats = RunStats()
    with progress(quiet) as advance:
        count = emit(stream(scorer, rest, advance, stats), **emit_args)
    summary(count, unit, started, quiet, stats, options, config.max_length)
