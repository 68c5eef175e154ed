"""Property-based tests of the reader and writer: no bytes crash them; any text round-trips exactly."""

from __future__ import annotations

import io

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from bge_rerank_cli.cli import app, console
from bge_rerank_cli.inputs import Rejected, parse_rerank_item, parse_score_item, records
from bge_rerank_cli.records import RerankItem, ScoreItem
from tests.fakes import FakeScorer

runner = CliRunner()
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_lines = st.lists(
    st.one_of(
        st.binary(max_size=60),
        st.builds(
            lambda q, p: orjson.dumps({"query": q, "passage": p}),
            st.one_of(st.text(max_size=20), st.integers(-(2**63), 2**63 - 1), st.none()),
            st.one_of(st.text(max_size=20), st.lists(st.text(max_size=3), max_size=2)),
        ),
    ),
    max_size=8,
).map(lambda lines: b"\n".join(lines))


@given(data=st.one_of(st.binary(max_size=400), json_lines))
@settings(max_examples=300, deadline=None)
def test_the_reader_never_raises_on_any_bytes(data: bytes):
    for parse, kind in ((parse_score_item, ScoreItem), (parse_rerank_item, RerankItem)):
        out = list(records(io.BytesIO(data), "fuzz", parse))
        assert all(isinstance(item, kind | Rejected) for item in out)
        lines = [item.line for item in out]
        assert lines == sorted(set(lines))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeScorer:
    scorer = FakeScorer()
    monkeypatch.setattr(console, "loader", lambda config, quiet: lambda: scorer)
    return scorer


@given(data=st.one_of(st.binary(max_size=300), json_lines), on_error=st.sampled_from(["fail", "skip"]))
@SETTINGS
def test_the_cli_never_shows_a_traceback(fake: FakeScorer, data: bytes, on_error: str):
    for command in ("score", "rerank"):
        result = runner.invoke(app, [command, "-f", "jsonl", "--on-error", on_error], input=data)
        assert result.exit_code in (0, 3), result.output
        assert "Traceback" not in result.output and "this is a bug" not in result.stderr
        for line in result.stdout_bytes.splitlines():  # JSONL lines end at \n, not at NEL/LS/PS
            orjson.loads(line)


nonblank = st.text(min_size=1, max_size=200).filter(lambda t: t.strip())


@given(query=nonblank, passage=nonblank, extra=st.text(max_size=50))
@SETTINGS
def test_any_text_comes_back_byte_identical(fake: FakeScorer, query: str, passage: str, extra: str):
    record = {"query": query, "passage": passage, "note": extra}
    line = orjson.dumps(record)
    result = runner.invoke(app, ["score", "-f", "jsonl"], input=line + b"\n")
    assert result.exit_code == 0, result.output
    (out_line,) = result.stdout_bytes.splitlines()
    out = orjson.loads(out_line)
    assert (out["query"], out["passage"], out["note"]) == (query, passage, extra)
    assert out_line.startswith(line[:-1] + b",")  # the original fields' bytes, unchanged, come first
