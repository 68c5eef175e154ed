"""The body shared by `score` and `rerank`: intake, model, streaming output, checkpoints, signals, summary."""

from __future__ import annotations

import io
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Generic, TypeVar

import typer
from rich.console import Console

from ..config import LoaderConfig, ScoreOptions
from ..engine import Interrupted, JobControl, Scorer
from ..errors import UsageError
from ..inputs import DOCUMENTS_KEYS, parse_object
from ..jobs import Checkpoint, ErrorLog, Intake, OnError, StopSwitch, last_jsonl_record, truncate_to
from ..outputs import JsonlWriter, LineWriter, TsvWriter, resolve_format
from . import common

Item = TypeVar("Item")
Row = TypeVar("Row")
Records = Callable[[int, Callable[[int, bytes], None] | None], Iterable[Any]]


@dataclass(frozen=True)
class Rendering(Generic[Row]):
    """How one command's results are written in each format."""

    to_json: Callable[[Row], dict[str, Any]]
    tsv_columns: tuple[str, ...]
    to_tsv: Callable[[Row], list[dict[str, Any]]]
    render: Callable[[list[Row], Console, bool], None]
    line_of: Callable[[Row], int]
    to_trec: Callable[[Row], list[str]] | None = None


@dataclass(frozen=True)
class JobSpec:
    fmt: str
    output: str | None
    errors: str | None
    on_error: OnError
    resume: bool
    quiet: bool
    unit: str


def run_job(
    config: LoaderConfig,
    options: ScoreOptions,
    spec: JobSpec,
    source: str,
    records: Records,
    stream: Callable[[Scorer, Iterable[Any], JobControl], Iterator[list[Row]]],
    rendering: Rendering[Row],
) -> None:
    """Read, score and write, accounting for every input line; resumable with -o FILE and --resume."""
    if spec.on_error not in ("fail", "skip"):
        raise UsageError(f"--on-error must be fail or skip, got {spec.on_error!r}.")
    started = time.perf_counter()
    checkpoint = _resume_point(spec, source)
    verify = _verifier(spec.output, checkpoint) if checkpoint else None
    with ExitStack() as stack:
        out, text_file = stack.enter_context(_output(spec.output, append=checkpoint is not None))
        fmt = resolve_format(spec.fmt, text_file)
        if spec.resume and fmt != "jsonl":
            raise UsageError("--resume works with JSONL output (--format jsonl).")
        if fmt == "trec" and rendering.to_trec is None:
            raise UsageError("--format trec is for ranked output: use it with `bge-rerank rerank`.")
        errors = ErrorLog(stack.enter_context(_errors_file(spec.errors, append=checkpoint is not None)))
        intake: Intake[Any] = Intake(
            records(checkpoint.last_line if checkpoint else 0, verify),
            on_error=spec.on_error,
            errors=errors if spec.errors else None,
            source=source,
        )
        items = iter(intake)
        first = next(items, None)
        if first is None:
            intake.raise_failure()
            _finish(spec, intake, 0, started, None, options, config, started)
            return
        scorer = common.load_model(config, spec.quiet)
        scoring_started = time.perf_counter()
        switch = stack.enter_context(StopSwitch().installed())
        progress = stack.enter_context(common.progress(spec.quiet))
        control = JobControl(on_progress=progress, should_stop=switch)
        ckpt = checkpoint or Checkpoint(input=source)
        base = Checkpoint(input=source, skipped=ckpt.skipped, blank=ckpt.blank)
        written = ckpt.written
        chunks = stream(scorer, _chain(first, items), control)
        try:
            if fmt in ("table", "chart"):
                rows = [row for chunk in chunks for row in chunk]
                console = (
                    Console(file=_text_io(text_file), highlight=False)
                    if text_file
                    else Console(highlight=False)
                )
                rendering.render(rows, console, fmt == "chart")
                written += len(rows)
            else:
                write = _row_writer(fmt, out, rendering)
                for chunk in chunks:
                    for row in chunk:
                        write(row)
                    out.flush()
                    errors.flush()
                    written += len(chunk)
                    if chunk:
                        ckpt.last_record_line = rendering.line_of(chunk[-1])
                    if spec.output and fmt == "jsonl":
                        _save(ckpt, base, spec, intake, out, errors, written)
        except Interrupted:
            out.flush()
            errors.flush()
            _interrupted(spec, fmt, switch, ckpt, written, started)
        if spec.output and fmt == "jsonl":
            _save(ckpt, base, spec, intake, out, errors, written)
        if intake.failure is not None:
            if spec.output and fmt == "jsonl":
                intake.failure.hint = "Fix that line and rerun with --resume, or use --on-error skip."
            raise intake.failure
        _finish(spec, intake, written, started, control, options, config, scoring_started)
        if spec.output:
            Checkpoint.remove(spec.output)


def _row_writer(fmt: str, out: BinaryIO, rendering: Rendering[Row]) -> Callable[[Row], None]:
    """A function writing one result row in ``fmt`` (jsonl, tsv or trec) to ``out``."""
    if fmt == "jsonl":
        jsonl = JsonlWriter(out)

        def write_jsonl(row: Row) -> None:
            jsonl.write(rendering.to_json(row))

        return write_jsonl
    if fmt == "trec":
        lines, to_trec = LineWriter(out), rendering.to_trec
        assert to_trec is not None

        def write_trec(row: Row) -> None:
            for line in to_trec(row):
                lines.write(line)

        return write_trec
    tsv = TsvWriter(out, rendering.tsv_columns)

    def write_tsv(row: Row) -> None:
        for record in rendering.to_tsv(row):
            tsv.write(record)

    return write_tsv


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _save(
    ckpt: Checkpoint,
    base: Checkpoint,
    spec: JobSpec,
    intake: Intake[Any],
    out: BinaryIO,
    errors: ErrorLog,
    written: int,
) -> None:
    assert spec.output is not None
    ckpt.last_line = intake.position
    ckpt.output_bytes = out.tell()
    ckpt.errors_bytes = errors.stream.tell() if spec.errors else 0
    ckpt.written = written
    ckpt.skipped = base.skipped + intake.skipped
    ckpt.blank = base.blank + intake.blank
    ckpt.save(spec.output)


def _resume_point(spec: JobSpec, source: str) -> Checkpoint | None:
    if not spec.resume:
        return None
    if spec.output is None:
        raise UsageError("--resume needs -o FILE: the output of the job to continue.")
    checkpoint = Checkpoint.load(spec.output)
    if checkpoint.input != source:
        raise UsageError(
            f"--resume: {spec.output} was written from {checkpoint.input}, not {source}; refusing to mix inputs."
        )
    truncate_to(spec.output, checkpoint.output_bytes)
    if spec.errors:
        truncate_to(spec.errors, checkpoint.errors_bytes)
    return checkpoint


def _verifier(output: str | None, checkpoint: Checkpoint) -> Callable[[int, bytes], None] | None:
    """Check, while skipping the done part of the input, that the output's last record came from it."""
    if output is None or checkpoint.last_record_line == 0:
        return None
    last = last_jsonl_record(output)
    if last is None:
        raise UsageError(f"--resume: {output} is empty but its checkpoint says records were written.")

    def verify(number: int, raw: bytes) -> None:
        if number != checkpoint.last_record_line:
            return
        try:
            source_record = parse_object(raw, number, "input")
        except Exception:
            source_record = {}
        mismatched = [
            key
            for key, value in source_record.items()
            if key not in DOCUMENTS_KEYS and last.get(key, last.get(f"input_{key}")) != value
        ]
        if not source_record or mismatched:
            raise UsageError(
                f"--resume: the last record of {output} does not match input line {number} "
                f"(fields {', '.join(mismatched) or 'unreadable'}): is this the same input? Refusing to resume."
            )

    return verify


def _interrupted(
    spec: JobSpec, fmt: str, switch: StopSwitch, ckpt: Checkpoint, written: int, started: float
) -> None:
    name = "SIGTERM" if switch.exit_code == 143 else "SIGINT"
    where = f"in {spec.output}" if spec.output else "on stdout"
    common.say(
        f"[yellow]stopped[/] by {name} after {time.perf_counter() - started:.1f}s: {written} records {where}, "
        f"input accounted for up to line {ckpt.last_line}."
    )
    if spec.output and fmt == "jsonl":
        argv = [a for a in sys.argv[1:] if a != "--resume"]
        command = shlex.join(["bge-rerank", *argv, "--resume"])
        common.say(f"resume with: {command}")
    raise typer.Exit(switch.exit_code)


def _finish(
    spec: JobSpec,
    intake: Intake[Any],
    written: int,
    started: float,
    control: JobControl | None,
    options: ScoreOptions,
    config: LoaderConfig,
    scoring_started: float,
) -> None:
    if spec.quiet:
        return
    elapsed = time.perf_counter() - started
    if intake.accepted == 0 and not intake.skipped:
        lines = f" ({intake.read} blank lines)" if intake.read else ""
        common.say(f"[yellow]warning:[/] no records in the input{lines}; nothing to do.")
        return
    parts = [f"read {intake.read} lines", f"wrote {written} {spec.unit}"]
    if intake.skipped:
        parts.append(f"skipped {intake.skipped}" + (f" (see {spec.errors})" if spec.errors else ""))
    if intake.blank:
        parts.append(f"{intake.blank} blank")
    line = ", ".join(parts) + f" in {elapsed:.1f}s"
    stats = control.stats if control else None
    if stats and stats.pairs:
        scoring = max(time.perf_counter() - scoring_started, 1e-9)
        line += f"; {stats.pairs} pairs scored at {stats.pairs / scoring:.1f}/s"
        if stats.unique_pairs < stats.pairs:
            line += f", {stats.pairs - stats.unique_pairs} duplicates scored once"
        if stats.chunked:
            line += f", {stats.chunked} long passages in {stats.sequences} windows"
    common.say(f"[dim]{line}[/]")
    if stats and stats.queries:
        per_query = (time.perf_counter() - scoring_started) / stats.queries * 1000
        common.say(
            f"[dim]top-1 replaced in {stats.top1_replaced} of {stats.queries} queries "
            f"({stats.top1_replaced / stats.queries:.0%}); latency {per_query:.0f} ms/query[/]"
        )
    if stats and stats.truncated:
        share = stats.truncated / max(stats.pairs, 1)
        advice = (
            "raise --max-length or --max-chunks"
            if options.long_docs == "chunk"
            else "raise --max-length (bge-reranker-v2-m3 takes up to 8192) or use --long-docs chunk"
        )
        level = "warning" if share >= 0.05 else "note"
        common.say(
            f"[yellow]{level}:[/] {stats.truncated} of {stats.pairs} pairs ({share:.0%}) did not fit "
            f"--max-length {config.max_length} and lost tokens (see truncated/dropped_tokens); {advice}."
        )


@contextmanager
def _output(path: str | None, *, append: bool) -> Iterator[tuple[BinaryIO, IO[Any] | None]]:
    """Yield (binary stream, the file for Rich, or None for stdout)."""
    if path is None or path == "-":
        yield sys.stdout.buffer, None
        return
    try:
        handle = open(path, "ab" if append else "wb")  # noqa: SIM115  # closed below
    except OSError as exc:
        raise UsageError(f"cannot write --output {path}: {exc.strerror}.") from None
    with handle:
        yield handle, handle


@contextmanager
def _errors_file(path: str | None, *, append: bool) -> Iterator[BinaryIO]:
    if path is None:
        yield io.BytesIO()
        return
    try:
        handle = open(path, "ab" if append else "wb")  # noqa: SIM115  # closed below
    except OSError as exc:
        raise UsageError(f"cannot write --errors {path}: {exc.strerror}.") from None
    with handle:
        yield handle


def _text_io(binary: IO[Any]) -> IO[str]:
    return io.TextIOWrapper(binary, encoding="utf-8", write_through=True)


@dataclass(frozen=True)
class RayOptions:
    engine: str
    address: str | None
    actors: int
    gpus_per_actor: float | None
    cpus_per_actor: float


def run_ray_job(
    kind: str,
    config: LoaderConfig,
    options: ScoreOptions,
    spec: JobSpec,
    ray: RayOptions,
    input: str | None,
    *,
    top_k: int | None = None,
    min_score: float | None = None,
) -> None:
    """`--engine ray`: the same job on Ray Data, written as JSONL files into the -o directory."""
    from ..ray_engine import RayJob, run

    if input is None or input == "-":
        raise UsageError("--engine ray reads files: give an input path, directory, glob or URI (not stdin).")
    if spec.output is None:
        raise UsageError("--engine ray writes a directory of JSONL files: give -o DIR.")
    if spec.resume:
        raise UsageError("--resume is for the local engine; rerun a Ray job into a fresh -o DIR.")
    if spec.fmt not in ("auto", "jsonl"):
        raise UsageError("--engine ray writes JSONL only.")
    job = RayJob(kind, config, options, spec.on_error, top_k, min_score)  # type: ignore[arg-type]
    result = run(
        job,
        input,
        spec.output,
        address=ray.address,
        actors=ray.actors,
        gpus_per_actor=ray.gpus_per_actor,
        cpus_per_actor=ray.cpus_per_actor,
        progress=not spec.quiet and common.err_console.is_terminal,
    )
    if not spec.quiet:
        skipped = f", {result.rejected} rejected lines in {spec.output}/errors" if result.rejected else ""
        common.say(
            f"[dim]ray: wrote {result.written} {spec.unit} to {spec.output}{skipped} in {result.seconds:.1f}s "
            f"with {result.actors} actor(s), {result.gpus_per_actor:g} GPU each[/]"
        )
