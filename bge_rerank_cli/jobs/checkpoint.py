"""Checkpoints beside an output file, and resuming from one without losing or duplicating a record."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ..errors import ResumeError, option
from .settings import Setting, from_json

E = TypeVar("E")
RESUME = option("resume", True)
VERSION = 2  # 1: before checkpoints recorded the job's settings


def start_over(output: str) -> str:
    """How to start a job over instead of resuming it."""
    return f"To start over, run without {RESUME}, or delete {output} and {Checkpoint.path_for(output)}."


@dataclass
class Checkpoint:
    """Written beside the output ``FILE`` as ``FILE.progress`` after every written group; removed when a
    job ends.

    ``input``: the identity of the source (its file, or the files and arguments it was built from).
    ``settings``: what the records were made with (see :mod:`.settings`); a resume must match them.
    ``model_limit``: the model's token limit, to resolve a resume's max length before loading the model.
    ``last_line``: every input line up to here is accounted for (in the output or the error log).
    ``output_bytes`` / ``errors_bytes``: the files' sizes at that moment; a resume truncates to them.
    ``last_record_line``: the input line of the output's last record, checked before resuming.
    """

    input: str
    settings: dict[str, Setting] = field(default_factory=dict)
    model_limit: int | None = None
    last_line: int = 0
    last_record_line: int = 0
    output_bytes: int = 0
    errors_bytes: int = 0
    written: int = 0
    skipped: int = 0
    blank: int = 0
    version: int = VERSION

    @staticmethod
    def path_for(output: str) -> Path:
        return Path(output + ".progress")

    def save(self, output: str) -> None:
        path = self.path_for(output)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(orjson.dumps(asdict(self)))
        os.replace(tmp, path)

    @staticmethod
    def nothing_to_resume(output: str) -> bool:
        """Neither the output nor its checkpoint exists: a resume starts the job from the beginning."""
        return not Path(output).exists() and not Checkpoint.path_for(output).exists()

    @classmethod
    def load(cls, output: str) -> Checkpoint:
        """The checkpoint beside ``output``, or a :class:`ResumeError` saying why there is none to resume
        from: no output, no checkpoint, an unreadable one, or one written by another version."""
        path = cls.path_for(output)
        if not Path(output).is_file():
            if path.is_file():
                raise ResumeError(
                    f"{RESUME}: {output} does not exist, but its checkpoint {path} does: the output was "
                    f"moved or deleted. Put it back to resume. {start_over(output)}"
                )
            raise ResumeError(f"{RESUME}: {output} does not exist; nothing to resume (run without {RESUME}).")
        if not path.is_file():
            raise ResumeError(
                f"{RESUME}: no checkpoint {path}: the job that wrote {output} finished or was not started "
                f"by bge-rerank with an output file. Run without {RESUME} to start over."
            )
        try:
            data = orjson.loads(path.read_bytes())
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise ResumeError(
                f"{RESUME}: checkpoint {path} is unreadable ({exc}). {start_over(output)}"
            ) from None
        version = data.get("version", 1)
        if version != VERSION or "settings" not in data:
            older = isinstance(version, int) and version < VERSION
            raise ResumeError(
                f"{RESUME}: checkpoint {path} was written by "
                + (
                    f"an older bge-rerank (checkpoint version {version}) that did not record the job's "
                    f"settings (model, max length, ...), so it cannot prove that a resume would write "
                    f"records like those in {output}. Finish the job with the version that started it. "
                    if older
                    else f"another bge-rerank (checkpoint version {version!r}, this one reads {VERSION}). "
                )
                + start_over(output)
            )
        try:
            data["settings"] = from_json(data["settings"])
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ResumeError(
                f"{RESUME}: checkpoint {path} is unreadable ({exc}). {start_over(output)}"
            ) from None

    @staticmethod
    def remove(output: str) -> None:
        Checkpoint.path_for(output).unlink(missing_ok=True)


Mismatches = Callable[[Any, dict[str, Any]], list[str]]


@dataclass
class ResumePoint:
    """Where a resumed job picks up, and the proof that it continues the same input.

    Input items up to ``done_through`` are skipped. The item at ``record_line`` produced the output's
    last record (``last_record``); ``mismatches(item, last_record)`` must find nothing wrong with it, and
    the source must still have that item, or the resume is refused before anything is written.
    """

    output: str
    done_through: int
    record_line: int = 0
    last_record: dict[str, Any] | None = None
    mismatches: Mismatches | None = None
    verified: bool = False

    def verify(self, line: int, item: Any | None) -> None:
        """Compare the source's item at ``record_line`` (``None``: it could not be read) with the output."""
        wrong = ["unreadable"] if item is None else []
        if item is not None and self.mismatches is not None and self.last_record is not None:
            wrong = self.mismatches(item, self.last_record)
        if wrong:
            raise ResumeError(
                f"{RESUME}: the last record of {self.output} does not match input line {line} "
                f"(fields {', '.join(wrong)}): is this the same input? Refusing to resume."
            )
        self.verified = True

    def require_verified(self, last_seen: int) -> None:
        if self.record_line and not self.verified:
            raise ResumeError(
                f"{RESUME}: {self.output} holds a record of input line {self.record_line}, but the input "
                f"ends at line {last_seen}: is this the same input? Refusing to resume."
            )

    def skip_done(
        self, entries: Iterable[E], line_of: Callable[[E], int], item_of: Callable[[E], Any | None]
    ) -> Iterator[E]:
        """``entries`` after the done part, verifying the done part's last record on the way past it."""
        last = 0
        for entry in entries:
            last = line_of(entry)
            if last <= self.done_through:
                if last == self.record_line:
                    self.verify(last, item_of(entry))
                continue
            self.require_verified(last)
            yield entry
        self.require_verified(last)


def skip_done(
    entries: Iterable[E],
    resume: ResumePoint | None,
    line_of: Callable[[E], int],
    item_of: Callable[[E], Any | None],
) -> Iterator[E]:
    """:meth:`ResumePoint.skip_done`, or every entry when the job is not resumed."""
    if resume is None:
        return iter(entries)
    return resume.skip_done(entries, line_of, item_of)


def last_jsonl_record(path: str, end: int | None = None) -> dict[str, Any] | None:
    """The last complete JSON line of a file's first ``end`` bytes (default: all), read backwards."""
    with open(path, "rb") as handle:
        if end is None:
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
