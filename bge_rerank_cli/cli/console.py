"""What people see on stderr: the console, log lines, the loading status and the progress line."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
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


class JobMeter:
    """A job's progress line on stderr: input lines done of the file's total with an ETA, and pairs/s.

    The total is counted in a background thread (newlines, at disk speed), so a big file starts scoring
    at once and the bar gets its total a moment later. On stdin there is no total: the line says so.
    """

    def __init__(self, bar: Any, total_of: str | None, stdin: bool, unit: str) -> None:
        self.bar, self.unit, self.stdin = bar, unit, stdin
        self.what = "lines" if total_of or stdin else "records"
        self.task = bar.add_task("scoring", total=None, lines=self._lines(0, None), rate="")
        self.total: int | None = None
        self.line = 0
        self.pairs = 0
        self.started = time.perf_counter()
        self.first = True
        if total_of is not None:
            threading.Thread(target=self._count, args=(total_of,), daemon=True).start()

    def _count(self, path: str) -> None:
        count, last = 0, b"\n"
        try:
            with open(path, "rb") as stream:
                while chunk := stream.read(1 << 20):
                    count += chunk.count(b"\n")
                    last = chunk[-1:]
        except OSError:
            return
        self.total = count + (last != b"\n")
        self.bar.update(self.task, total=self.total, lines=self._lines(self.line, self.total))

    def _lines(self, line: int, total: int | None) -> str:
        if total is not None:
            return f"{line:,}/{total:,} {self.what}"
        return f"{line:,} {self.what} (stdin: no total)" if self.stdin else f"{line:,} {self.what}"

    def advance(self, n: int) -> None:
        """``n`` more pairs scored (the engine's progress callback)."""
        self.pairs += n
        rate = self.pairs / max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(self.task, rate=f"{rate:,.1f} {self.unit}/s")

    def at_line(self, line: int) -> None:
        """Written up to input line ``line`` (the job's position callback)."""
        self.line = line
        if self.first:  # where scoring starts (a resumed job: its resume point) is not speed
            self.first = False
            self.started = time.perf_counter()
            self.bar.reset(
                self.task, total=self.total, completed=line, lines=self._lines(line, self.total), rate=""
            )
            return
        self.bar.update(self.task, completed=line, lines=self._lines(line, self.total))


@contextmanager
def job_progress(quiet: bool, source: Any, unit: str = "pairs") -> Iterator[JobMeter | None]:
    """A :class:`JobMeter` on a terminal (``None`` when quiet or piped) for a job reading ``source``: a
    JSONL file's lines are the total; stdin has none."""
    if quiet or not err_console.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn

    from ..jobs import JsonlSource

    jsonl = isinstance(source, JsonlSource)
    stdin = jsonl and source.path in (None, "-")
    total_of = str(source.path) if jsonl and not stdin and Path(str(source.path)).is_file() else None
    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total_of is not None:
        columns.append(BarColumn(bar_width=16))
    columns.append(TextColumn("{task.fields[lines]}"))
    if total_of is not None:
        columns += [TextColumn("· eta"), TimeRemainingColumn(compact=True)]
    columns.append(TextColumn("· {task.fields[rate]}"))
    with Progress(*columns, console=err_console, transient=True) as bar:
        yield JobMeter(bar, total_of, stdin, unit)
