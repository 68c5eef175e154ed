"""The JSONL reader and record parsers: pure unit tests."""

from __future__ import annotations

import io

import pytest

from bge_rerank_cli.errors import InputError
from bge_rerank_cli.inputs import parse_object, parse_rerank_item, parse_score_item, read_jsonl, records


def lines(data: bytes) -> list[tuple[int, dict]]:
    return list(read_jsonl(io.BytesIO(data), "in.jsonl"))


def test_line_numbers_count_blank_lines_bom_and_crlf():
    data = b'\xef\xbb\xbf{"a": 1}\r\n\r\n   \n{"a": 2}\n{"a": 3}'
    assert lines(data) == [(1, {"a": 1}), (4, {"a": 2}), (5, {"a": 3})]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"a": 1}\n{"a": \n', "in.jsonl: line 2: invalid JSON"),
        (b'{"a": 1}\n[1, 2]\n', "in.jsonl: line 2: expected a JSON object, got list"),
        (b'"text"\n', "line 1: expected a JSON object, got str"),
        (b"null\n", "line 1: expected a JSON object, got null"),
        (b'{"a": NaN}\n', "line 1: invalid JSON"),
        (b'{"a": "\xff"}\n', "line 1: not UTF-8: byte 0xff at byte 8"),
    ],
)
def test_bad_lines_name_their_line(data: bytes, message: str):
    with pytest.raises(InputError) as info:
        lines(data)
    assert message in str(info.value)


@pytest.mark.parametrize("key", ["passage", "document", "text", "doc"])
def test_score_passage_aliases(key: str):
    item = parse_score_item({"query": "q", key: "p", "id": 9}, 3)
    assert (item.line, item.query, item.passage, item.record["id"]) == (3, "q", "p", 9)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"passage": "p"}, 'missing "query"'),
        ({"query": None, "passage": "p"}, '"query" is null'),
        ({"query": "", "passage": "p"}, '"query" is empty'),
        ({"query": "  ", "passage": "p"}, '"query" is empty'),
        ({"query": 5, "passage": "p"}, '"query" must be a string, got int'),
        ({"query": "q"}, 'missing "passage"'),
        ({"query": "q", "passage": ["p"]}, '"passage" must be a string, got list'),
    ],
)
def test_score_record_errors(record: dict, message: str):
    with pytest.raises(InputError) as info:
        parse_score_item(record, 7, "f.jsonl")
    assert str(info.value).startswith("f.jsonl: line 7: ")
    assert message in str(info.value)


@pytest.mark.parametrize("key", ["documents", "candidates", "passages", "docs"])
def test_rerank_document_aliases_and_fields(key: str):
    item = parse_rerank_item(
        {"query": "q", key: ["plain", {"text": "rich", "id": "d2", "meta": {"x": 1}}], "qid": 4}, 2
    )
    assert item.record == {"query": "q", "qid": 4}
    assert [(d.index, d.text, d.fields) for d in item.documents] == [
        (0, "plain", {}),
        (1, "rich", {"id": "d2", "meta": {"x": 1}}),
    ]


def test_a_query_without_candidates_is_an_item_with_none():
    """A first stage that found nothing is not bad input: the query gets an empty result (as serve does)."""
    item = parse_rerank_item({"query": "q", "documents": [], "qid": 7}, 3)
    assert item.documents == () and item.record == {"query": "q", "qid": 7}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"query": "q"}, 'missing "documents"'),
        ({"query": "q", "documents": "abc"}, '"documents" must be a list, got str'),
        ({"query": "q", "documents": [{"id": 1}]}, 'documents[0] has no "text" field'),
        ({"query": "q", "documents": ["a", 3]}, "documents[1] must be a string or an object"),
        ({"query": "q", "docs": [{"text": None}]}, '"docs[0].text" is null'),
    ],
)
def test_rerank_record_errors(record: dict, message: str):
    with pytest.raises(InputError) as info:
        parse_rerank_item(record, 11)
    assert "line 11" in str(info.value)
    assert message in str(info.value)


def test_readers_are_lazy_and_turn_bad_lines_into_rejections():
    """A bad line far down the stream is only reached when the consumer gets there."""
    stream = io.BytesIO(b'{"query": "q", "passage": "p"}\nnot json\n\n{"query": "q"}\n')
    items = records(stream, "s", parse_score_item)
    assert next(items).passage == "p"
    assert stream.tell() < len(stream.getvalue())
    rest = list(items)
    assert [(r.line, r.blank) for r in rest] == [(2, False), (3, True), (4, False)]
    assert rest[0].reason.startswith("invalid JSON") and rest[0].raw == b"not json"
    assert rest[2].reason.startswith('missing "passage"')
    assert list(records(io.BytesIO(b""), "s", parse_rerank_item)) == []


@pytest.mark.parametrize(
    ("line", "says", "not_said"),
    [
        (
            b'{"query": "q", "passage": "caf\xe9"}',
            "not UTF-8: byte 0xe9 at byte 31 of the line",
            "surrogates",
        ),
        (b'{"query": "q", "passage": "a\\udc80"}', "without its pair is not Unicode text", "CSV"),
        (b'{"query": "q", "passage": "p",}', "trailing comma", "CSV"),  # an object's commas are not CSV's
    ],
)
def test_a_broken_line_says_what_to_fix(line: bytes, says: str, not_said: str):
    with pytest.raises(InputError) as error:
        parse_object(line, 1, "in")
    assert says in str(error.value) and not_said not in str(error.value)


@pytest.mark.parametrize(
    ("first_line", "says"),
    [
        (b"query,passage", "looks like CSV/TSV: convert with python -c"),
        (b"query\tpassage", "looks like CSV/TSV"),
        (b"[", "jq -c '.[]' FILE"),
        (b"{", "jq -c . FILE"),
        (b'[{"query": "q", "passage": "p"}]', "(for a JSON array: jq -c '.[]' FILE)"),
    ],
)
def test_a_file_that_is_not_jsonl_says_so_on_line_1(first_line: bytes, says: str):
    with pytest.raises(InputError) as error:
        parse_score_item(parse_object(first_line, 1, "in"), 1, "in")
    assert "one JSON object per line" in str(error.value) and says in str(error.value)
    with pytest.raises(InputError) as later:
        parse_object(b"query,passage", 2, "in")
    assert "per line" not in str(later.value)  # only line 1 guesses at the format
