"""Long jobs that lose nothing: input accounting, error logs, checkpoints for --resume, stop on signals."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO, Generic, Literal, TypeVar

import orjson

from .errors import InputError, UsageError
from .inputs import Rejected

T = TypeVar("T")
OnError = Literal["fail", "skip"]


class ErrorLog:
    """Rejected lines as JSONL: ``{"line", "reason", "raw"}`` (raw decoded as UTF-8, bad bytes escaped)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def write(self, rejected: Rejected) -> None:
        raw = rejected.raw.decode("utf-8", errors="backslashreplace")
        record = {"line": rejected.line, "reason": rejected.reason, "raw": raw}
        self.stream.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        self.stream.flush()


class Intake(Generic[T]):
    """Turns a stream of records and rejections into records only, accounting for every line.

    ``fail``: the first bad line ends the stream; :meth:`raise_failure` then raises it (after the
    records before it were processed). ``skip``: bad lines go to the error log and the stream goes on.
    Blank lines never stop a job; they are logged (with ``--errors``) and counted.
    """

    def __init__(
        self, records: Iterable[T | Rejected], *, on_error: OnError, errors: ErrorLog | None, source: str
    ) -> None:
        self._records = records
        self.on_error = on_error
        self.errors = errors
        self.source = source
        self.read = 0
        self.accepted = 0
        self.skipped = 0
        self.blank = 0
        self.position = 0  # the last input line consumed
        self.failure: InputError | None = None

    def __iter__(self) -> Iterator[T]:
        for record in self._records:
            self.read += 1
            if isinstance(record, Rejected):
                self.position = record.line
                if record.blank:
                    self.blank += 1
                elif self.on_error == "fail":
                    self.failure = InputError(record.reason, source=self.source, line=record.line)
                    return
                else:
                    self.skipped += 1
                if self.errors is not None:
                    self.errors.write(record)
                continue
            self.position = getattr(record, "line", self.position)
            self.accepted += 1
            yield record

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure


@dataclass
class Checkpoint:
    """Written beside ``-o FILE`` as ``FILE.progress`` after every flushed chunk; removed when a job ends.

    ``last_line``: every input line up to here is accounted for (in the output or the error log).
    ``output_bytes`` / ``errors_bytes``: the files' sizes at that moment; a resume truncates to them.
    ``last_record_line``: the input line of the output's last record, checked before resuming.
    """

    input: str
    last_line: int = 0
    last_record_line: int = 0
    output_bytes: int = 0
    errors_bytes: int = 0
    written: int = 0
    skipped: int = 0
    blank: int = 0
    version: int = 1

    @staticmethod
    def path_for(output: str) -> Path:
        return Path(output + ".progress")

    def save(self, output: str) -> None:
        path = self.path_for(output)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(orjson.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, output: str) -> Checkpoint:
        path = cls.path_for(output)
        if not Path(output).is_file():
            raise UsageError(f"--resume: {output} does not exist; nothing to resume (run without --resume).")
        if not path.is_file():
            raise UsageError(
                f"--resume: no checkpoint {path}: the job that wrote {output} finished or was not started "
                "by bge-rerank with -o. Rerun without --resume to start over."
            )
        try:
            data: dict[str, Any] = orjson.loads(path.read_bytes())
            return cls(**data)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise UsageError(
                f"--resume: checkpoint {path} is unreadable ({exc}); rerun without --resume."
            ) from None

    @staticmethod
    def remove(output: str) -> None:
        Checkpoint.path_for(output).unlink(missing_ok=True)


def truncate_to(path: str, size: int) -> None:
    """Cut a file back to ``size`` bytes: drops whatever was written after the last checkpoint."""
    with open(path, "r+b") as handle:
        handle.truncate(size)


def last_jsonl_record(path: str) -> dict[str, Any] | None:
    """The last complete JSON line of a file, read from its end."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        block = b""
        while end > 0 and block.count(b"\n") < 2:
            start = max(0, end - 65536)
            handle.seek(start)
            block = handle.read(end - start) + block
            end = start
    lines = [line for line in block.splitlines() if line.strip()]
    return orjson.loads(lines[-1]) if lines else None


class StopSwitch:
    """SIGINT/SIGTERM ask the job to stop after the batch in flight; a second SIGINT stops at once."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    @contextmanager
    def installed(self) -> Iterator[StopSwitch]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal or signal.SIGINT)
