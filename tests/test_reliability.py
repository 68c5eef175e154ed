"""Long jobs lose nothing: the bad-input catalogue, --on-error skip accounting, --resume after a signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from bge_rerank_cli.cli import app
from tests.conftest import REPO, SAMPLES, run_cli

runner = CliRunner()
OK = b'{"query": "what is deep learning", "passage": "deep learning trains neural networks"}'

# (label, line bytes, expected reason fragment or None when the line is valid)
SCORE_CATALOGUE: list[tuple[str, bytes, str | None]] = [
    ("invalid json", b'{"query": "q", "passage": }', "invalid JSON"),
    ("not an object (array)", b"[1, 2]", "expected a JSON object, got list"),
    ("not an object (string)", b'"just text"', "expected a JSON object, got str"),
    ("not an object (null)", b"null", "expected a JSON object, got null"),
    ("missing query", b'{"passage": "p"}', 'missing "query"'),
    ("null query", b'{"query": null, "passage": "p"}', '"query" is null'),
    ("empty query", b'{"query": "", "passage": "p"}', '"query" is empty'),
    ("numeric query", b'{"query": 12, "passage": "p"}', '"query" must be a string, got int'),
    ("list query", b'{"query": ["q"], "passage": "p"}', '"query" must be a string, got list'),
    ("missing passage", b'{"query": "q"}', 'missing "passage"'),
    ("null passage", b'{"query": "q", "passage": null}', '"passage" is null'),
    ("empty passage", b'{"query": "q", "passage": "   "}', '"passage" is empty'),
    ("numeric passage", b'{"query": "q", "text": 3.5}', '"text" must be a string, got float'),
    ("object passage", b'{"query": "q", "doc": {"a": 1}}', '"doc" must be a string, got dict'),
    ("invalid utf-8", b'{"query": "q", "passage": "caf\xe9"}', "not UTF-8: byte 0xe9"),
    ("NaN literal", b'{"query": "q", "passage": "p", "x": NaN}', "invalid JSON"),
    ("Infinity literal", b'{"query": "q", "passage": "p", "x": Infinity}', "invalid JSON"),
    ("CRLF line end", OK + b"\r", None),
    ("BOM in mid file", b"\xef\xbb\xbf" + OK, "invalid JSON"),
    ("very long line (10 MB)", b'{"query": "q", "passage": "' + b"deep learning " * 750_000 + b'"}', None),
]
RERANK_CATALOGUE: list[tuple[str, bytes, str | None]] = [
    ("empty documents", b'{"query": "q", "documents": []}', None),  # an empty result, as serve answers
    ("documents not a list", b'{"query": "q", "documents": "d"}', '"documents" must be a list'),
    ("mixed strings and objects", b'{"query": "q", "documents": ["a", {"text": "b", "id": 1}]}', None),
    (
        "number among documents",
        b'{"query": "q", "documents": ["a", 7]}',
        "documents[1] must be a string or an object",
    ),
    (
        "object without text",
        b'{"query": "q", "documents": [{"id": 1, "title": "t"}]}',
        'documents[0] has no "text"',
    ),
    (
        "duplicate ids",
        b'{"query": "q", "docs": [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}]}',
        "duplicate",
    ),
    ("null query", b'{"query": null, "documents": ["a"]}', '"query" is null'),
]


def jsonl(data: bytes | str) -> list[dict]:
    text = data.decode() if isinstance(data, bytes) else data
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(("label", "line", "reason"), [c for c in SCORE_CATALOGUE if c[2]], ids=lambda x: x)
def test_each_bad_score_line_fails_with_its_line_number(
    tiny_xlmr: Path, label: str, line: bytes, reason: str
):
    data = OK + b"\n" + line + b"\n" + OK + b"\n"
    result = runner.invoke(app, ["score", "-m", str(tiny_xlmr), "-f", "jsonl"], input=data)
    assert result.exit_code == 3, (label, result.output)
    assert f"<stdin>: line 2: {reason}" in result.stderr
    assert "Traceback" not in result.output
    assert len(jsonl(result.stdout)) == 1  # the good line before it was still scored and written


@pytest.mark.parametrize(("label", "line", "reason"), [c for c in RERANK_CATALOGUE if c[2]], ids=lambda x: x)
def test_each_bad_rerank_line_fails_with_its_line_number(
    tiny_xlmr: Path, label: str, line: bytes, reason: str
):
    result = runner.invoke(app, ["rerank", "-m", str(tiny_xlmr), "-f", "jsonl"], input=b"\n" + line)
    assert result.exit_code == 3, (label, result.output)
    assert "line 2: " in result.stderr and reason in result.stderr
    assert "Traceback" not in result.output


def test_skip_mode_accounts_for_every_line(tiny_xlmr: Path, tmp_path: Path):
    lines = [b"\xef\xbb\xbf" + OK, b""]  # a BOM on line 1, then a blank line
    for _, line, _ in SCORE_CATALOGUE:
        lines += [line, OK]
    data = b"\n".join(lines) + b'\n{"query": "q", "passage": "truncated last li'  # no newline, cut short
    source = tmp_path / "in.jsonl"
    source.write_bytes(data)
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    args = [
        "score",
        str(source),
        "-m",
        str(tiny_xlmr),
        "--on-error",
        "skip",
        "--errors",
        str(errors),
        "-o",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    input_lines = data.count(b"\n") + 1
    outputs, rejected = jsonl(out.read_bytes()), jsonl(errors.read_bytes())
    assert input_lines == len(outputs) + len(rejected)
    bad = sum(1 for _, _, reason in SCORE_CATALOGUE if reason) + 2  # + the blank line + the cut last line
    assert len(rejected) == bad
    assert {r["line"] for r in rejected}.isdisjoint(range(0))  # line numbers are ints
    assert rejected[-1]["line"] == input_lines and "invalid JSON" in rejected[-1]["reason"]
    assert any(r["reason"] == "blank line" for r in rejected)
    assert all(set(r) == {"line", "reason", "raw"} for r in rejected)
    long_row = next(r for r in outputs if len(r["passage"]) > 1_000_000)
    assert long_row["truncated"] is True
    assert f"skipped {bad - 1}" in result.stderr and "1 blank" in result.stderr
    assert not Path(str(out) + ".progress").exists()  # a finished job leaves no checkpoint


def test_skip_mode_for_rerank_and_a_hundred_thousand_candidates(tiny_xlmr: Path, tmp_path: Path):
    many = orjson.dumps({"query": "json", "documents": [f"doc {i % 50} json" for i in range(100_000)]})
    lines = [many] + [line for _, line, _ in RERANK_CATALOGUE]
    errors = tmp_path / "errors.jsonl"
    args = ["rerank", "-m", str(tiny_xlmr), "--on-error", "skip", "--errors", str(errors), "-f", "jsonl"]
    args += ["--top-k", "3"]
    result = runner.invoke(app, args, input=b"\n".join(lines) + b"\n")
    assert result.exit_code == 0, result.output
    rows, rejected = jsonl(result.stdout), jsonl(errors.read_bytes())
    assert len(rows) + len(rejected) == len(lines)
    assert rows[0]["results"][0]["rank"] == 1 and len(rows[0]["results"]) == 3
    assert rows[1] == {"query": "q", "results": []}  # the query whose first stage found nothing
    assert "99950 duplicates scored once" in result.stderr


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "bge_rerank_cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _big_input(tmp_path: Path, copies: int = 12) -> Path:
    rows = jsonl((SAMPLES / "mixed_pairs.jsonl").read_bytes())
    path = tmp_path / "big.jsonl"
    with path.open("wb") as out:
        for copy in range(copies):
            for row in rows:
                out.write(orjson.dumps({**row, "id": f"{row['id']}-{copy}", "copy": copy}) + b"\n")
    return path


def _records_checkpointed(checkpoint: Path) -> bool:
    """The job has written and checkpointed records (a checkpoint exists from the start, empty)."""
    try:
        return json.loads(checkpoint.read_text())["written"] > 0
    except (OSError, ValueError, KeyError):
        return False


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_then_resume_equals_an_uninterrupted_run(tiny_xlmr: Path, tmp_path: Path, sig, code):
    source = _big_input(tmp_path)
    common = ["score", str(source), "-m", str(tiny_xlmr), "--batch-size", "8", "--max-length", "256"]
    full = tmp_path / "full.jsonl"
    assert run_cli([*common, "-o", str(full)]).returncode == 0

    out = tmp_path / "out.jsonl"
    proc = _start([*common, "-o", str(out)])
    checkpoint = Path(str(out) + ".progress")
    deadline = time.monotonic() + 120
    while not _records_checkpointed(checkpoint) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be interrupted: make the input bigger"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr.decode()
    assert b"resume with: bge-rerank score" in stderr and b"--resume" in stderr
    partial = jsonl(out.read_bytes())
    expected = jsonl(full.read_bytes())
    assert 0 < len(partial) < len(expected)
    assert json.loads(checkpoint.read_text())["written"] == len(partial)

    with out.open("ab") as handle:  # a crash could leave half a record after the checkpoint
        handle.write(b'{"query": "half a rec')
    resumed = run_cli([*common, "-o", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr.decode()
    final = jsonl(out.read_bytes())
    assert [r["id"] for r in final] == [r["id"] for r in expected]
    for a, b in zip(final, expected, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)
        assert {k: v for k, v in a.items() if k not in ("score", "logit")} == {
            k: v for k, v in b.items() if k not in ("score", "logit")
        }
    assert not checkpoint.exists()


def test_resume_refuses_when_the_output_does_not_match_the_input(tiny_xlmr: Path, tmp_path: Path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(OK.replace(b"deep", f"deep{i}".encode()) for i in range(5)) + b"\n")
    out = tmp_path / "out.jsonl"
    args = ["score", str(source), "-m", str(tiny_xlmr), "-o", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    from bge_rerank_cli.config import LoaderConfig
    from bge_rerank_cli.jobs import JsonlSource, ScoreTask
    from tests.jobstate import stop_after

    stop_after(out, JsonlSource(str(source)), ScoreTask(), LoaderConfig(model=str(tiny_xlmr)), records=2)
    source.write_bytes(source.read_bytes().replace(b"deep1", b"changed"))
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 2
    assert "does not match input line 2" in result.stderr

    source.write_bytes(source.read_bytes().replace(b"changed", b"deep1"))
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert [r["query"] for r in jsonl(out.read_bytes())] == [f"what is deep{i} learning" for i in range(5)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resume"], "--resume needs -o FILE"),
        (["--resume", "-o", "{tmp}/gone.jsonl"], "gone.jsonl does not exist, but its checkpoint"),
        (["--on-error", "maybe"], "--on-error: 'maybe' is not one of 'fail', 'skip'"),
    ],
)
def test_resume_and_on_error_misuse(tmp_path: Path, args: list[str], message: str):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    (tmp_path / "gone.jsonl.progress").write_bytes(b"{}")  # a checkpoint whose output went away
    result = runner.invoke(app, ["score", str(SAMPLES / "pairs.jsonl"), *args])
    assert result.exit_code == 2
    assert message in result.stderr


def test_a_model_needing_remote_code_says_so(tiny_xlmr: Path, tmp_path: Path):
    import shutil

    model = tmp_path / "custom"
    shutil.copytree(tiny_xlmr, model)
    (model / "custom_model.py").write_text(
        "from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification\n"
        "class CustomConfig(XLMRobertaConfig):\n    model_type = 'custom-xlmr'\n"
        "class CustomReranker(XLMRobertaForSequenceClassification):\n    config_class = CustomConfig\n"
    )
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "custom-xlmr"
    config["auto_map"] = {
        "AutoConfig": "custom_model.CustomConfig",
        "AutoModelForSequenceClassification": "custom_model.CustomReranker",
    }
    (model / "config.json").write_text(json.dumps(config))
    result = run_cli(["score", "-m", str(model), "-q", "a", "-p", "b"])
    assert result.returncode == 4
    assert b"needs --trust-remote-code" in result.stderr and b"Traceback" not in result.stderr
    assert run_cli(["score", "-m", str(model), "-q", "a", "-p", "b", "--trust-remote-code"]).returncode == 0


def test_a_classifier_with_several_labels_is_refused(tmp_path: Path):
    from tools.random_model import build_xlmr

    model = build_xlmr(tmp_path / "three", num_labels=3)
    result = runner.invoke(app, ["score", "-m", str(model), "-q", "a", "-p", "b"])
    assert result.exit_code == 4
    assert "has 3 output labels; a reranker has exactly one" in result.stderr
