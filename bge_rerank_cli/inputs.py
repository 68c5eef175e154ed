"""JSONL in: streaming, line-numbered, with field aliases. Unknown fields pass through untouched."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import orjson

from .errors import InputError, UsageError, option
from .records import Document, RerankItem, ScoreItem

QUERY_KEY = "query"
PASSAGE_KEYS = ("passage", "document", "text", "doc")
DOCUMENTS_KEYS = ("documents", "candidates", "passages", "docs")
BOM = b"\xef\xbb\xbf"
T = TypeVar("T")


STDIN = "<stdin>"


@contextmanager
def open_input(path: str | None) -> Iterator[tuple[BinaryIO, str]]:
    """Open a file, or stdin for ``-`` / ``None``; yields the stream and the name errors use for it."""
    if path is None or path == "-":
        yield sys.stdin.buffer, STDIN
        return
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"input file {path} does not exist or is not a file.")
    with file.open("rb") as stream:
        yield stream, path


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input line that yields no record: why, and the line as it was read."""

    line: int
    reason: str
    raw: bytes
    blank: bool = False


def read_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(line_number, bytes)`` from 1, without the line end (LF or CRLF) and without a leading UTF-8 BOM.

    ``lines`` is a binary stream or any iterable of its lines (with or without their ``\\n``): a file
    read locally and a file that Ray Data read as one block of bytes split the same way.
    """
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        yield number, raw.rstrip(b"\r\n")


def split_lines(data: bytes) -> list[bytes]:
    """A whole file's bytes as its lines, each with its ``\\n``, as iterating over the open file gives them."""
    return io.BytesIO(data).readlines()


JSONL_HINT = "the input is JSONL: one JSON object per line"


def parse_object(line: bytes, number: int, source: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise InputError(_json_problem(line, number, exc.msg), source=source, line=number) from None
    if not isinstance(obj, dict):
        kind = type(obj).__name__ if obj is not None else "null"
        hint = (
            f"; {JSONL_HINT} (for a JSON array: jq -c '.[]' FILE)" if number == 1 and kind == "list" else ""
        )
        raise InputError(f"expected a JSON object, got {kind}{hint}", source=source, line=number)
    return obj


def _json_problem(line: bytes, number: int, message: str) -> str:
    """Why a line is not JSON, in terms of what to fix: bytes that are not UTF-8 (where, and how to
    convert), a lone surrogate escape, or the parser's message with a hint at the file's format."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            f"not UTF-8: byte 0x{line[exc.start]:02x} at byte {exc.start + 1} of the line; the input must be "
            "UTF-8: convert it, e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8 (with the file's own "
            "encoding for latin1)"
        )
    if "surrogate" in message:
        return (
            f"invalid JSON ({message}): a \\udXXX escape without its pair is not Unicode text; fix the "
            "program that wrote it, or drop that escape"
        )
    return f"invalid JSON ({message}){_format_hint(line, number)}"


def _format_hint(line: bytes, number: int) -> str:
    """On line 1, what the file looks like instead of JSONL, and the one-liner that converts it."""
    if number != 1:
        return ""
    text = line.strip()
    if text in (b"[", b"{") or text.startswith((b"[{", b"[ {")):
        return f"; {JSONL_HINT}: a pretty-printed or array JSON file converts with jq -c '.[]' FILE (array) or jq -c . FILE"
    if not text.startswith((b"{", b"[")) and (
        b"," in text or b"\t" in text
    ):  # a broken object has commas too
        return (
            f"; {JSONL_HINT}, and this looks like CSV/TSV: convert with "
            'python -c "import csv, json, sys; [print(json.dumps(r, ensure_ascii=False)) for r in csv.DictReader(sys.stdin)]" < FILE.csv'
        )
    return f"; {JSONL_HINT}"


def read_jsonl(stream: BinaryIO, source: str = "<input>") -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line; raise on the first bad one."""
    for number, line in read_lines(stream):
        if line.strip():
            yield number, parse_object(line, number, source)


Parser = Callable[[dict[str, Any], int, str], T]


def parse_line(number: int, line: bytes, source: str, parse: Parser[T]) -> T | Rejected:
    """One input line as a record, or a :class:`Rejected` saying why: nothing is lost silently."""
    if not line.strip():
        return Rejected(number, "blank line", line, blank=True)
    try:
        return parse(parse_object(line, number, source), number, source)
    except InputError as exc:
        return Rejected(number, exc.reason, line)


def records(stream: BinaryIO, source: str, parse: Parser[T]) -> Iterator[T | Rejected]:
    """Every line of a stream as a record or a :class:`Rejected`, in order."""
    for number, line in read_lines(stream):
        yield parse_line(number, line, source, parse)


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
    documents = tuple(_document(i, doc, key, source, line) for i, doc in enumerate(docs))
    _check_unique_ids(documents, key, source, line)
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


def _check_unique_ids(documents: tuple[Document, ...], key: str, source: str, line: int) -> None:
    seen: dict[Any, int] = {}
    for doc in documents:
        if "id" not in doc.fields:
            continue
        ident = doc.fields["id"]
        marker = orjson.dumps(ident)  # ids may be numbers, strings, even objects
        if marker in seen:
            raise InputError(
                f"duplicate document id {marker.decode()} in {key}[{seen[marker]}] and {key}[{doc.index}]",
                source=source,
                line=line,
            )
        seen[marker] = doc.index


def _query(obj: dict[str, Any], source: str, line: int) -> str:
    if QUERY_KEY not in obj:
        raise InputError(f'missing "{QUERY_KEY}"', source=source, line=line)
    return _text(obj[QUERY_KEY], QUERY_KEY, source, line)


ARGUMENTS = "<arguments>"


def inline_score_items(query: str, passages: Iterable[str]) -> list[ScoreItem]:
    """Pairs given as arguments (one query, its passages), numbered from 1 like input lines."""
    query = _text(query, "query", ARGUMENTS, 0)
    items = [
        ScoreItem(i, query, _text(p, "passage", ARGUMENTS, i), {"query": query, "passage": p})
        for i, p in enumerate(passages, start=1)
    ]
    if not items:
        raise UsageError(f"no passages: give {option('passages')} at least one passage.")
    return items


def inline_rerank_item(query: str, documents: Iterable[str]) -> RerankItem:
    """One query and its candidates given as arguments: a single item, line 1."""
    query = _text(query, "query", ARGUMENTS, 0)
    docs = tuple(Document(i, _text(d, f"documents[{i}]", ARGUMENTS, 0)) for i, d in enumerate(documents))
    if not docs:
        raise UsageError(f"no documents: give {option('documents')} at least one document.")
    return RerankItem(1, query, docs, {"query": query})


def read_docs_file(path: str) -> list[str]:
    """One passage per line; blank lines are skipped."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"{option('docs_file', path)} does not exist or is not a file.")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})", source=path) from None
    return [line for line in text.splitlines() if line.strip()]
