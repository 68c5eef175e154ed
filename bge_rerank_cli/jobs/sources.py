"""Where a job's items come from: JSONL files or stdin, items given in memory (arguments, the Python API),
and first-stage runs (TREC run + corpus + queries, or a BEIR folder).

Every source yields numbered items (or :class:`Rejected` lines), has a ``name`` that identifies it in a
checkpoint, and passes the part of its input a resumed job already did through
:meth:`ResumePoint.skip_done`, so that every kind of source proves it is the same input as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import InputError, UsageError, option
from ..inputs import ARGUMENTS, STDIN, Rejected, open_input, parse_line, read_lines
from .checkpoint import ResumePoint, skip_done
from .tasks import Task


class Source(Protocol):
    @property
    def name(self) -> str:
        """What identifies this input in a checkpoint and in error messages."""
        ...

    def items(self, task: Task[Any, Any], resume: ResumePoint | None = None) -> Iterator[Any]:
        """The task's items in input order, numbered by ``.line``, with :class:`Rejected` for bad lines."""
        ...


@dataclass(frozen=True)
class JsonlSource:
    """JSONL, one object per line, from a file, or from stdin when ``path`` is ``None`` or ``"-"``."""

    path: str | None = None

    @property
    def name(self) -> str:
        return STDIN if self.path in (None, "-") else str(self.path)

    def items(self, task: Task[Any, Any], resume: ResumePoint | None = None) -> Iterator[Any]:
        with open_input(self.path) as (stream, source):
            lines = skip_done(
                read_lines(stream), resume, lambda e: e[0], lambda e: _parsed(e[0], e[1], source, task)
            )
            for number, line in lines:
                yield parse_line(number, line, source, task.parse)


def _parsed(number: int, line: bytes, source: str, task: Task[Any, Any]) -> Any | None:
    parsed = parse_line(number, line, source, task.parse)
    return None if isinstance(parsed, Rejected) else parsed


@dataclass(frozen=True)
class ItemsSource:
    """Items built in memory (command-line arguments, Python lists), numbered by their ``line``."""

    records: Sequence[Any]
    name: str = ARGUMENTS

    def items(self, task: Task[Any, Any], resume: ResumePoint | None = None) -> Iterator[Any]:
        return skip_done(self.records, resume, lambda item: item.line, lambda item: item)


@dataclass(frozen=True)
class TrecSource:
    """A first-stage TREC run (``qid Q0 docid rank score tag``) with the corpus and queries it refers to:
    one rerank item per query, in the run's order, documents in first-stage order (``depth``: the first K).
    """

    run: str
    corpus: str
    queries: str
    depth: int | None = None

    @property
    def name(self) -> str:
        """The files (``depth`` is a setting the checkpoint records, not part of the input's identity)."""
        return f"run {self.run} (corpus {self.corpus}, queries {self.queries})"

    def items(self, task: Task[Any, Any], resume: ResumePoint | None = None) -> Iterator[Any]:
        from ..ir import load_candidates

        if task.kind != "rerank":
            raise UsageError(f"a first-stage run is ranked input: use it to rerank, not to {task.kind}.")
        _, items = load_candidates(self.run, self.corpus, self.queries, self.depth)
        return skip_done(items, resume, lambda item: item.line, lambda item: item)


@dataclass(frozen=True)
class BeirSource(TrecSource):
    """A BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) and a first-stage run."""

    folder: str = ""
    split: str = "test"

    @classmethod
    def of(cls, folder: str, run: str, *, split: str = "test", depth: int | None = None) -> BeirSource:
        corpus, queries, _ = beir_paths(folder, split)
        return cls(run, str(corpus), str(queries), depth, folder, split)

    @property
    def qrels(self) -> str:
        return str(beir_paths(self.folder, self.split)[2])


def beir_paths(folder: str | Path, split: str) -> tuple[Path, Path, Path]:
    """A BEIR folder's corpus, queries and qrels files, or a :class:`UsageError` naming what is missing."""
    root = Path(folder)
    paths = (root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / f"{split}.tsv")
    for p in paths:
        if not p.is_file():
            raise UsageError(f"{option('beir', str(folder))}: missing {p.relative_to(root)} (a BEIR folder has "
                             "corpus.jsonl, queries.jsonl and qrels/<split>.tsv).")  # fmt: skip
    return paths


def read_all(source: Source, task: Task[Any, Any]) -> list[Any]:
    """Every item of a source, for work that needs them all at once; the first bad line is an error."""
    items: list[Any] = []
    for entry in source.items(task):
        if isinstance(entry, Rejected):
            if entry.blank:
                continue
            raise InputError(entry.reason, source=source.name, line=entry.line)
        items.append(entry)
    return items
