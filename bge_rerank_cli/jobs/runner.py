"""The job runner under every front end: a source, a task and an output in; a :class:`Report` out.

It reads the source through the intake (every line accounted for), loads the model only once there is
something to score, writes each group of results as it completes (JSONL, TSV, TREC, or rows kept for
the caller), checkpoints a JSONL output file after every group, resumes from such a checkpoint, and
stops cleanly between batches when its ``stop`` callable says so. It prints nothing.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from ..backends.base import Scorer
from ..backends.recorded import RecordedScorer
from ..config import Choice, LoaderConfig, ScoreOptions
from ..engine import Interrupted, JobControl, RunStats
from ..errors import InvalidOption, UsageError, option
from ..outputs import JsonlWriter, LineWriter, TsvWriter
from .checkpoint import RESUME, Checkpoint
from .intake import ErrorLog, Intake, OnError
from .resume import check_loaded, checkpoint_to_resume, loaded_settings, resume_point
from .settings import load_through_cache
from .sources import Source
from .tasks import Task

if TYPE_CHECKING:
    from ..score_cache import CacheStore


class OutputFormat(Choice):
    """What the runner writes: JSONL, TSV or TREC lines, or ``rows`` kept in :attr:`Report.rows`."""

    JSONL = "jsonl"
    TSV = "tsv"
    TREC = "trec"
    ROWS = "rows"


@dataclass(frozen=True)
class Output:
    """Where results go: ``path`` (``None`` or ``"-"``: the ``stream`` given to :func:`run`, else stdout),
    in ``format``; rejected input lines go to ``errors`` as JSONL when it is set."""

    path: str | None = None
    format: str = "jsonl"
    errors: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "format", OutputFormat.parse("format", self.format))

    @property
    def to_file(self) -> bool:
        return self.path not in (None, "-")


@dataclass(frozen=True)
class Job:
    """One batch job: what to read, what to do with it, where to write it, and how to treat bad lines.

    ``resume=True`` continues an interrupted job from its output file's checkpoint, with the same
    settings (or starts it when neither the output file nor its checkpoint exists).
    """

    source: Source
    task: Task[Any, Any]
    output: Output = field(default_factory=Output)
    on_error: str = "fail"
    resume: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "on_error", OnError.parse("on_error", self.on_error))


@dataclass
class Report:
    """What a job did. ``stopped`` is true when ``stop`` ended it early (the output is resumable)."""

    source: str
    task: str
    unit: str
    read: int = 0
    accepted: int = 0
    skipped: int = 0
    blank: int = 0
    written: int = 0
    resumed_after: int = 0  # input lines a resumed job found already done
    resumed_written: int = 0  # records the output held from before the resume (counted in ``written``)
    last_line: int = 0  # every input line up to here is accounted for
    seconds: float = 0.0
    load_seconds: float = 0.0
    model_loaded: bool = True  # False: every pair was in the score cache, and the model was never loaded
    scoring_seconds: float = 0.0
    stats: RunStats = field(default_factory=RunStats)
    scorer: dict[str, Any] = field(default_factory=dict)  # Scorer.describe(), when a model was loaded
    max_length: int | None = None  # effective tokens per pair (the request clamped to the model's limit)
    model_limit: int | None = None
    options: ScoreOptions = field(default_factory=ScoreOptions)
    output: str | None = None
    errors: str | None = None
    stopped: bool = False
    fresh_start: bool = False  # a resume was asked for with nothing to resume: it started from the beginning
    rows: list[Any] | None = None

    @property
    def top1_replacement_rate(self) -> float | None:
        """Share of queries whose best document was not first in the input (rerank only)."""
        return self.stats.top1_replaced / self.stats.queries if self.stats.queries else None

    @property
    def pairs_per_second(self) -> float:
        return self.stats.pairs / self.scoring_seconds if self.scoring_seconds > 0 else 0.0

    @property
    def ms_per_query(self) -> float | None:
        return self.scoring_seconds / self.stats.queries * 1000 if self.stats.queries else None

    @property
    def resumable(self) -> bool:
        return self.stopped and self.output is not None


Loader = Callable[[], Scorer]
Progress = Callable[[int], None]


def run(
    job: Job,
    load: Loader,
    *,
    config: LoaderConfig | None = None,
    stop: Callable[[], bool] | None = None,
    progress: Progress | None = None,
    stream: BinaryIO | None = None,
    position: Callable[[int], None] | None = None,
    cache: CacheStore | None = None,
) -> Report:
    """Run ``job``: ``load()`` is called for the scorer once the source has a first item.

    ``config`` is the configuration ``load`` loads from, when there is one: a resume then compares the
    settings it can resolve without the model before loading it (the rest once it is loaded; both before
    anything is written). Raises :class:`InputError` for the first bad line when ``on_error`` is ``fail``
    (after writing and checkpointing everything before it), :class:`ResumeError` when a resume is refused
    (the files left as they were), and the loader's :class:`ModelError`. A ``stop()`` that turns true ends
    the job after the batch in flight, with ``Report.stopped`` set; the group in progress is dropped and
    redone by a resume. ``position(line)`` is told the input line written up to: once where scoring starts
    (0, or a resumed job's resume point), then after each written group. ``cache``: a score cache,
    bound to the loaded scorer's settings; pairs it holds are not scored again (``Report.stats`` counts
    its hits and misses).
    """
    started = time.perf_counter()
    _check(job)
    output = job.output
    report = Report(job.source.name, job.task.kind, job.task.unit, output=output.path if output.to_file else None,
                    errors=output.errors, options=getattr(job.task, "options", ScoreOptions()))  # fmt: skip
    checkpoint = checkpoint_to_resume(job.source, job.task, output, config) if job.resume else None
    report.fresh_start = job.resume and checkpoint is None
    resume = resume_point(job.task, output, checkpoint) if checkpoint else None
    if checkpoint is not None:
        report.resumed_after, report.written = checkpoint.last_line, checkpoint.written
        report.resumed_written = checkpoint.written
    with ExitStack() as stack:
        sinks = _Sinks(output, stream, stack, checkpoint)
        errors = sinks.errors
        intake: Intake[Any] = Intake(
            job.source.items(job.task, resume),
            on_error=job.on_error,
            errors=errors if output.errors else None,
            source=job.source.name,
        )
        items = iter(intake)
        first = next(items, None)
        if first is None:  # nothing (left) to score
            intake.raise_failure()
            sinks.commit()
            report.last_line = max(intake.position, checkpoint.last_line if checkpoint else 0)
            if output.to_file:
                Checkpoint.remove(str(output.path))
            return _finish(report, intake, started)
        scorer = load_through_cache(cache, config, load)  # with a score cache, maybe loaded only if need be
        checkpointed = output.to_file and output.format == "jsonl"
        report.load_seconds, report.scorer = scorer.load_seconds, scorer.describe()
        report.max_length, report.model_limit = scorer.max_length, scorer.model_limit
        settings = loaded_settings(job.source, job.task, output, scorer, config) if checkpointed else {}
        if checkpoint is not None:
            check_loaded(str(output.path), checkpoint, settings)
        out = sinks.commit()
        ckpt = checkpoint or Checkpoint(job.source.name, settings, scorer.model_limit)
        if checkpointed and checkpoint is None:  # resumable from here on, even if stopped before a group
            ckpt.save(str(output.path))
        scoring_started = time.perf_counter()
        control = JobControl(stats=report.stats, on_progress=progress, should_stop=stop)
        if cache is not None:
            from .settings import bind_cache

            control.cache = bind_cache(cache, scorer, report.options)
        base = Checkpoint(input=job.source.name, skipped=ckpt.skipped, blank=ckpt.blank)
        write = _writer(output.format, out, job.task, report)
        if position is not None:
            position(checkpoint.last_line if checkpoint else 0)
        try:
            for group in job.task.stream(scorer, _chain(first, items), control):
                for row in group:
                    write(row)
                out.flush()
                errors.flush()
                report.written += len(group)
                if group:
                    ckpt.last_record_line = job.task.line_of(group[-1])
                    if position is not None:
                        position(ckpt.last_record_line)
                if checkpointed:
                    _save(ckpt, base, output, intake, out, errors, report.written)
        except Interrupted:
            # The group in progress is dropped: the last checkpoint (saved after the last written group)
            # is where a resume starts, and the output stays a prefix of the input.
            report.stopped = True
        out.flush()
        errors.flush()
        report.scoring_seconds = time.perf_counter() - scoring_started
        if isinstance(scorer, RecordedScorer):  # a model loaded part-way: its load is not scoring time
            report.model_loaded, report.load_seconds = scorer.loaded, scorer.load_seconds
            report.scoring_seconds -= scorer.load_seconds
        if checkpointed and not report.stopped:
            _save(ckpt, base, output, intake, out, errors, report.written)
        if intake.failure is not None:
            if checkpointed:
                intake.failure.hint = (
                    f"Fix that line and rerun with {RESUME}, or use {option('on_error', 'skip')}."
                )
            raise intake.failure
        report.last_line = ckpt.last_line if report.stopped else max(intake.position, ckpt.last_line)
        _finish(report, intake, started)
        if output.to_file and not report.stopped:
            Checkpoint.remove(str(output.path))
        return report


def _check(job: Job) -> None:
    fmt = job.output.format
    if job.resume:
        if not job.output.to_file:
            raise InvalidOption(
                "resume", f"needs {option('output')}: the output file of the job to continue."
            )
        if fmt != "jsonl":
            raise UsageError(f"{RESUME} works with JSONL output ({option('format', 'jsonl')}).")
    if fmt == "trec" and not job.task.ranked:
        raise UsageError(f"{option('format', 'trec')} is for ranked output: use it to rerank, not to score.")


def _finish(report: Report, intake: Intake[Any], started: float) -> Report:
    """Counts of this run's reading (a resumed job counts what it read after the resume point)."""
    report.read = intake.read
    report.accepted = intake.accepted
    report.skipped = intake.skipped
    report.blank = intake.blank
    report.seconds = time.perf_counter() - started
    return report


def _writer(fmt: str, out: BinaryIO, task: Task[Any, Any], report: Report) -> Callable[[Any], None]:
    """A function writing one result row in ``fmt`` to ``out`` (or keeping it, for ``rows``)."""
    if fmt == "rows":
        rows: list[Any] = []
        report.rows = rows
        return rows.append
    if fmt == "jsonl":
        jsonl = JsonlWriter(out)
        return lambda row: jsonl.write(task.to_json(row))
    if fmt == "trec":
        lines = LineWriter(out)

        def write_trec(row: Any) -> None:
            for line in task.to_trec(row):
                lines.write(line)

        return write_trec
    tsv = TsvWriter(out, task.tsv_columns)

    def write_tsv(row: Any) -> None:
        for record in task.to_tsv(row):
            tsv.write(record)

    return write_tsv


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _save(
    ckpt: Checkpoint,
    base: Checkpoint,
    output: Output,
    intake: Intake[Any],
    out: BinaryIO,
    errors: ErrorLog,
    written: int,
) -> None:
    ckpt.last_line = max(intake.position, ckpt.last_line)
    ckpt.output_bytes = out.tell()
    ckpt.errors_bytes = errors.stream.tell() if output.errors else 0
    ckpt.written = written
    ckpt.skipped = base.skipped + intake.skipped
    ckpt.blank = base.blank + intake.blank
    ckpt.save(str(output.path))


class _Sinks:
    """The output stream and the rejected-lines log. A new job opens (and empties) its files at once. A
    resumed job leaves them untouched until :meth:`commit`, called once every check has passed: they are
    then cut back to the checkpoint and opened for appending (lines rejected before that wait in memory).
    """

    def __init__(
        self, output: Output, stream: BinaryIO | None, stack: ExitStack, checkpoint: Checkpoint | None
    ) -> None:
        self._output, self._stack, self._checkpoint = output, stack, checkpoint
        self._pending = io.BytesIO()  # also the scratch log when there is no errors file
        self.errors = ErrorLog(self._pending)
        self._out: BinaryIO | None = None
        if checkpoint is None:
            self._out = stack.enter_context(_open(output.path, stream))
            if output.errors:
                self.errors.stream = stack.enter_context(_writable(output.errors, "errors", append=False))

    def commit(self) -> BinaryIO:
        """The output stream, the files of a resumed job cut back to its checkpoint first."""
        if self._out is not None:
            return self._out
        output, checkpoint = self._output, self._checkpoint
        assert checkpoint is not None and output.path is not None
        out = self._stack.enter_context(_writable(output.path, "output", append=True))
        log = (
            self._stack.enter_context(_writable(output.errors, "errors", append=True))
            if output.errors
            else None
        )
        _cut(out, checkpoint.output_bytes)
        if log is not None:
            _cut(log, checkpoint.errors_bytes)
            log.write(self._pending.getvalue())
            self.errors.stream = log
        self._out = out
        return out


def _cut(handle: BinaryIO, size: int) -> None:
    """Drop whatever a file holds past ``size`` (written after the last checkpoint) and append from there."""
    handle.truncate(size)
    handle.seek(size)


@contextmanager
def _open(path: str | None, stream: BinaryIO | None) -> Iterator[BinaryIO]:
    """The output file, emptied, or the given stream (stdout by default) for ``None`` and ``"-"``."""
    if path is None or path == "-":
        yield stream if stream is not None else sys.stdout.buffer
        return
    with _writable(path, "output", append=False) as handle:
        yield handle


@contextmanager
def _writable(path: str, setting: str, *, append: bool) -> Iterator[BinaryIO]:
    try:
        handle = open(path, "ab" if append else "wb")  # noqa: SIM115  # closed below
    except OSError as exc:
        raise InvalidOption(setting, f"{path}: cannot write it ({exc.strerror}).") from None
    with handle:
        yield handle


__all__ = ["Job", "Output", "OutputFormat", "Report", "run"]
