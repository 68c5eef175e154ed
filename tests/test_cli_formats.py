"""Output formats and CLI plumbing through CliRunner, with a fake scorer (format tests only)."""

from __future__ import annotations

import orjson
import pytest
from typer.testing import CliRunner

from bge_rerank_cli.cli import app, console
from tests.conftest import SAMPLES
from tests.fakes import FakeScorer

runner = CliRunner()


@pytest.fixture(autouse=True)
def fake_model(monkeypatch: pytest.MonkeyPatch) -> FakeScorer:
    scorer = FakeScorer()
    monkeypatch.setattr(console, "loader", lambda config, quiet: lambda: scorer)
    return scorer


def jsonl(text: str) -> list[dict]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


def test_score_jsonl_keeps_fields_and_order():
    result = runner.invoke(app, ["score", str(SAMPLES / "pairs.jsonl"), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    rows = jsonl(result.stdout)
    assert [r["id"] for r in rows] == list(range(1, 11))
    for row in rows:
        assert set(row) == {"id", "query", "passage", "score", "logit", "truncated", "dropped_tokens"}
        assert 0.0 <= row["score"] <= 1.0


def test_a_users_score_field_is_kept_not_overwritten():
    line = b'{"query": "q", "passage": "p", "score": 12.5, "rank": 3}\n'
    row = jsonl(runner.invoke(app, ["score", "--format", "jsonl"], input=line).stdout)[0]
    assert row["input_score"] == 12.5 and row["rank"] == 3 and row["score"] != 12.5


def test_rerank_results_shape():
    line = orjson.dumps({"query": "q", "candidates": ["a", {"text": "b", "id": "x", "score": 7}], "k": 1})
    result = runner.invoke(app, ["rerank", "--format", "jsonl"], input=line)
    row = jsonl(result.stdout)[0]
    assert set(row) == {"query", "k", "results"}
    assert [r["rank"] for r in row["results"]] == [1, 2]
    by_index = {r["index"]: r for r in row["results"]}
    assert by_index[1]["id"] == "x" and by_index[1]["input_score"] == 7 and by_index[1]["text"] == "b"
    assert list(by_index[0]) == ["index", "rank", "score", "logit", "truncated", "dropped_tokens", "text"]
    scores = [r["score"] for r in row["results"]]
    assert scores == sorted(scores, reverse=True)


def test_tsv_escapes_tabs_and_newlines():
    line = b'{"query": "q", "passage": "a\\tb\\nc"}\n'
    result = runner.invoke(app, ["score", "--format", "tsv"], input=line)
    header, row = result.stdout.splitlines()
    assert header.split("\t") == ["line", "score", "logit", "truncated", "query", "passage"]
    assert row.split("\t")[5] == "a\\tb\\nc"


@pytest.mark.parametrize("fmt", ["table", "chart"])
def test_tables_escape_markup_and_show_text(fmt: str):
    line = orjson.dumps(
        {"query": "q [red]x[/]", "documents": ["[bold]keep brackets[/]", "如何申请软件著作权"]}
    )
    result = runner.invoke(app, ["rerank", "--format", fmt], input=line)
    assert result.exit_code == 0, result.output
    assert "[bold]keep brackets[/]" in result.stdout
    assert "如何申请软件著作权" in result.stdout


def test_output_file(tmp_path):
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["score", str(SAMPLES / "pairs.jsonl"), "-o", str(out)])
    assert result.exit_code == 0
    assert result.stdout == ""  # auto format into a file is JSONL, nothing on stdout
    assert len(jsonl(out.read_text())) == 10


def test_inline_forms():
    result = runner.invoke(app, ["score", "-q", "query", "-p", "one", "-p", "two", "-f", "jsonl"])
    assert [r["passage"] for r in jsonl(result.stdout)] == ["one", "two"]
    result = runner.invoke(
        app, ["rerank", "-q", "q", "-d", "x", "--docs-file", str(SAMPLES / "passages.txt"), "-f", "jsonl"]
    )
    assert len(jsonl(result.stdout)[0]["results"]) == 5


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        (["score", "-f", "jsonl"], b'{"query": "q", "passage": "p"}\n{"query": "q"}\n', 3, "line 2: missing"),
        (["rerank", "-f", "jsonl"], b"{oops\n", 3, "<stdin>: line 1: invalid JSON"),
        (["score", "nope.jsonl"], b"", 2, "nope.jsonl does not exist"),
        (["score", "-q", "only a query"], b"", 2, "needs --query and at least one --passage"),
        (["rerank", "-d", "doc"], b"", 2, "need --query"),
        (["score", "-f", "xml"], b"", 2, "--format: 'xml' is not one of 'auto', 'jsonl', 'table', 'chart'"),
        (["score", "--fp16", "--dtype", "bf16"], b"", 2, "contradicts"),
        (["score", "--max-length", "2"], b"", 2, "--max-length must be at least"),
        (["score", "--device", "gpu"], b"", 2, "--device must be"),
    ],
)
def test_errors_are_one_line_with_exit_codes(args, stdin, code, message):
    result = runner.invoke(app, args, input=stdin)
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_empty_input_is_not_an_error():
    result = runner.invoke(app, ["rerank", "-f", "jsonl"], input=b"\n\n")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "no records" in result.stderr


def test_a_bad_line_after_good_ones_fails_with_its_number():
    data = b'{"query": "q", "passage": "p"}\n{"query": 1, "passage": "p"}\n'
    result = runner.invoke(app, ["score", "-f", "jsonl"], input=data)
    assert result.exit_code == 3
    assert "line 2" in result.stderr


def test_unicode_line_separators_pass_through_byte_identical_in_one_jsonl_line(tmp_path):
    """NEL, LS and PS are legal unescaped in JSON: a record keeps its bytes, and its line ends at \\n only."""
    passages = ["a\x85b", "c\u2028d", "e\u2029f", "plain \\ back\\\x85slash"]
    lines = [orjson.dumps({"query": "q", "passage": p}) for p in passages]
    bad = '{"query": "q\x85"}'.encode()  # no passage: goes to the errors file, raw line included
    errors = tmp_path / "errors.jsonl"
    result = runner.invoke(
        app,
        ["score", "-f", "jsonl", "--on-error", "skip", "--errors", str(errors)],
        input=b"\n".join([*lines, bad]) + b"\n",
    )
    assert result.exit_code == 0, result.output
    out = result.stdout_bytes.split(b"\n")
    assert out[-1] == b"" and len(out) == len(passages) + 1
    assert [orjson.loads(line)["passage"] for line in out[:-1]] == passages
    assert all(o.startswith(i[:-1] + b",") for o, i in zip(out, lines, strict=False))
    (logged,) = errors.read_bytes().split(b"\n")[:-1]
    assert orjson.loads(logged)["raw"] == bad.decode()


@pytest.mark.parametrize("fmt", ["jsonl", "trec", "table", "chart"])
def test_a_query_without_candidates_gets_an_empty_result_in_every_format(fmt: str):
    """As `serve` answers `"documents": []`: the job goes on, the query is kept with no results."""
    lines = b'{"query": "nothing found", "qid": "1", "documents": []}\n{"query": "q", "qid": "2", "documents": ["a", "b"]}\n'
    result = runner.invoke(app, ["rerank", "--format", fmt], input=lines)
    assert result.exit_code == 0, result.output
    if fmt == "jsonl":
        assert jsonl(result.stdout)[0] == {"query": "nothing found", "qid": "1", "results": []}
    elif fmt == "trec":
        assert [line.split()[0] for line in result.stdout.splitlines()] == ["2", "2"]  # nothing for qid 1
    else:
        assert "nothing found  (no candidates)" in result.stdout


def test_each_command_offers_only_the_formats_it_writes():
    """`score` writes no ranking, so its --help offers no trec and the parser refuses it (exit 2)."""
    score_help = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "200"}).stdout
    rerank_help = runner.invoke(app, ["rerank", "--help"], env={"COLUMNS": "200"}).stdout
    assert "<auto|jsonl|table|chart|tsv>" in score_help and "trec" not in score_help
    assert "<auto|jsonl|table|chart|tsv|trec>" in rerank_help
    refused = runner.invoke(app, ["score", "-q", "q", "-p", "p", "-f", "trec"])
    assert refused.exit_code == 2 and "'trec' is not one of" in refused.stderr


def test_shell_completion_completes_commands_and_choices():
    """`--show-completion` prints a script; completing asks the CLI itself, which answers from its options."""
    import os
    import subprocess
    import sys

    script = subprocess.run([sys.executable, "-m", "bge_rerank_cli", "--show-completion", "bash"],
                            capture_output=True, timeout=60)  # fmt: skip
    assert script.returncode == 0 and b"_BGE_RERANK_COMPLETE" in script.stdout

    def complete(words: str) -> list[str]:
        env = {**os.environ, "_BGE_RERANK_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "bge_rerank_cli"], capture_output=True, env=env, timeout=60
        )
        return result.stdout.decode().split()

    assert complete("bge-rerank sc") == ["score", "score-cache"]
    assert complete("bge-rerank score-cache ") == ["stats", "clear"]
    assert complete("bge-rerank score --format ") == ["auto", "jsonl", "table", "chart", "tsv"]
    assert "trec" in complete("bge-rerank rerank --format ")
