"""What people see on stderr: the console, log lines, the loading status and the progress line."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from ..backends import Scorer
    from ..config import LoaderConfig

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class DataConsole(Console):
    """A console for what a command prints on stdout (tables, charts, reports). A closed pipe (`| head`)
    raises BrokenPipeError for the command to end with SIGPIPE's status, where Rich would exit 1."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def out_console(**options: Any) -> Console:
    return DataConsole(highlight=False, **options)


def say(message: str) -> None:
    """A message for people, on stderr (Rich markup allowed; escape user text)."""
    err_console.print(message)


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno >= logging.WARNING else "note"
        err_console.print(f"[yellow]{level}:[/] {escape(record.getMessage())}")


def setup_logging(debug: bool) -> None:
    logger = logging.getLogger("bge_rerank_cli")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False


def loader(config: LoaderConfig, quiet: bool) -> Callable[[], Scorer]:
    """The job's model loader, with a status line on a terminal while it loads."""

    def load() -> Scorer:
        from ..backends import load_scorer

        if quiet or not err_console.is_terminal:
            return load_scorer(config)
        with err_console.status(f"loading {escape(config.model)} …", spinner="dots"):
            return load_scorer(config)

    return load


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
