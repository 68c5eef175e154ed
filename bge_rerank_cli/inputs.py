"""JSONL in: streaming, line-numbered, with field aliases. Unknown fields pass through untouched."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from .errors import InputError, UsageError
from .records import Document, RerankItem, ScoreItem

QUERY_KEY = "query"
PASSAGE_KEYS = ("passage", "document", "text", "doc")
DOCUMENTS_KEYS = ("documents", "candidates", "passages", "docs")
BOM = b"\xef\xbb\xbf"


@contextmanager
def open_input(path: str | None, command: str) -> Iterator[tuple[BinaryIO, str]]:
    """Open a file argument, or stdin for ``-`` / nothing. Refuses to wait on an interactive terminal."""
    if path is None or path == "-":
        if path is None and sys.stdin.isatty():
            raise UsageError(
                "no input: give a JSONL file, pipe one in, or use inline flags.",
                hint=f"Example: bge-rerank {command} input.jsonl  (see `bge-rerank {command} --help`).",
            )
        yield sys.stdin.buffer, "<stdin>"
        return
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"input file {path} does not exist or is not a file.")
    with file.open("rb") as stream:
        yield stream, path


def read_jsonl(stream: BinaryIO, source: str = "<input>") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line. Blank lines are skipped."""
    for number, raw in enumerate(stream, start=1):
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        line = raw.rstrip(b"\r\n")
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc.msg})", source=source, line=number) from None
        if not isinstance(obj, dict):
            kind = type(obj).__name__ if obj is not None else "null"
            raise InputError(f"expected a JSON object, got {kind}", source=source, line=number)
        yield number, obj


def _text(value: Any, what: str, source: str, line: int) -> str:
    if value is None:
        raise InputError(f'"{what}" is null', source=source, line=line)
    if not isinstance(value, str):
        raise InputError(f'"{what}" must be a string, got {type(value).__name__}', source=source, line=line)
    if not value.strip():
        raise InputError(f'"{what}" is empty', source=source, line=line)
    return value


def _pick(obj: dict[str, Any], keys: tuple[str, ...], source: str, line: int) -> str:
    for key in keys:
        if key in obj:
            return key
    names = ", ".join(f'"{k}"' for k in keys)
    raise InputError(f'missing "{keys[0]}" (one of {names})', source=source, line=line)


def parse_score_item(obj: dict[str, Any], line: int, source: str = "<input>") -> ScoreItem:
    query = _query(obj, source, line)
    key = _pick(obj, PASSAGE_KEYS, source, line)
    return ScoreItem(line, query, _text(obj[key], key, source, line), obj)


def parse_rerank_item(obj: dict[str, Any], line: int, source: str = "<input>") -> RerankItem:
    query = _query(obj, source, line)
    key = _pick(obj, DOCUMENTS_KEYS, source, line)
    docs = obj[key]
    if not isinstance(docs, list):
        raise InputError(f'"{key}" must be a list, got {type(docs).__name__}', source=source, line=line)
    if not docs:
        raise InputError(f'"{key}" is empty: nothing to rerank', source=source, line=line)
    documents = tuple(_document(i, doc, key, source, line) for i, doc in enumerate(docs))
    record = {k: v for k, v in obj.items() if k != key}
    return RerankItem(line, query, documents, record)


def _document(index: int, doc: Any, key: str, source: str, line: int) -> Document:
    where = f"{key}[{index}]"
    if isinstance(doc, str):
        return Document(index, _text(doc, where, source, line))
    if isinstance(doc, dict):
        if "text" not in doc:
            raise InputError(f'{where} has no "text" field', source=source, line=line)
        text = _text(doc["text"], f"{where}.text", source, line)
        return Document(index, text, {k: v for k, v in doc.items() if k != "text"})
    kind = type(doc).__name__ if doc is not None else "null"
    raise InputError(
        f'{where} must be a string or an object with "text", got {kind}', source=source, line=line
    )


def _query(obj: dict[str, Any], source: str, line: int) -> str:
    if QUERY_KEY not in obj:
        raise InputError(f'missing "{QUERY_KEY}"', source=source, line=line)
    return _text(obj[QUERY_KEY], QUERY_KEY, source, line)


def score_items(stream: BinaryIO, source: str) -> Iterator[ScoreItem]:
    for line, obj in read_jsonl(stream, source):
        yield parse_score_item(obj, line, source)


def rerank_items(stream: BinaryIO, source: str) -> Iterator[RerankItem]:
    for line, obj in read_jsonl(stream, source):
        yield parse_rerank_item(obj, line, source)


def inline_score_items(query: str, passages: Iterable[str]) -> list[ScoreItem]:
    query = _text(query, "--query", "<arguments>", 0)
    return [
        ScoreItem(i, query, _text(p, "--passage", "<arguments>", i), {"query": query, "passage": p})
        for i, p in enumerate(passages, start=1)
    ]


def inline_rerank_item(query: str, documents: Iterable[str]) -> RerankItem:
    query = _text(query, "--query", "<arguments>", 0)
    docs = tuple(Document(i, _text(d, "--doc", "<arguments>", 0)) for i, d in enumerate(documents))
    if not docs:
        raise UsageError("no documents: pass -d TEXT (repeatable) or --docs-file FILE.")
    return RerankItem(1, query, docs, {"query": query})


def read_docs_file(path: str) -> list[str]:
    """One passage per line; blank lines are skipped."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--docs-file {path} does not exist or is not a file.")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", source=path) from None
    return [line for line in text.splitlines() if line.strip()]
