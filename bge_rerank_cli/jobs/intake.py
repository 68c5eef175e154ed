"""Input accounting: every line read becomes a record, a logged rejection, or the failure that stops the job."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO, Generic, TypeVar

import orjson

from ..config import Choice
from ..errors import InputError
from ..inputs import Rejected

T = TypeVar("T")


class OnError(Choice):
    """What a bad input line does: ``fail`` stops the job there; ``skip`` logs it and goes on."""

    FAIL = "fail"
    SKIP = "skip"


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
    Blank lines never stop a job; they are logged (when there is an error log) and counted.
    """

    def __init__(
        self, records: Iterable[T | Rejected], *, on_error: str, errors: ErrorLog | None, source: str
    ) -> None:
        self._records = records
        self.on_error = OnError.parse("on_error", on_error)
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
                if not record.blank and self.on_error == "fail":
                    # Not accounted for: a resume after fixing the line must read it again.
                    self.failure = InputError(record.reason, source=self.source, line=record.line)
                    return
                self.position = record.line
                if record.blank:
                    self.blank += 1
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
