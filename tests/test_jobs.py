"""The library layer under every front end: sources, resume verification, the runner, the Python file API.

Real tiny model throughout; each resume case fabricates the state a job leaves when it is stopped after
its first record (output cut back, checkpoint written with the job's settings: tests/jobstate.py), then
changes the input and resumes. Settings checks: tests/test_resume_settings.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from bge_rerank_cli import Reranker
from bge_rerank_cli.cli import app
from bge_rerank_cli.cli.exits import flag_name
from bge_rerank_cli.config import LoaderConfig, ScoreOptions
from bge_rerank_cli.errors import BgeRerankError, InputError, ResumeError, UsageError
from bge_rerank_cli.inputs import read_lines, split_lines
from bge_rerank_cli.jobs import (
    BeirSource,
    Checkpoint,
    ItemsSource,
    Job,
    JsonlSource,
    Output,
    RerankTask,
    ScoreTask,
    Source,
    Task,
    TrecSource,
    run,
)
from bge_rerank_cli.records import ScoreItem
from tests.conftest import REPO, SAMPLES
from tests.jobstate import snapshot, stop_after

runner = CliRunner()
BEIR = SAMPLES / "beir-sample"


def jsonl(data: bytes) -> list[dict]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def assert_same_records(got: list[dict], expected: list[dict]) -> None:
    """Equal records; scores within 1e-5 (fp32 rounding moves where batches are composed differently)."""

    def numbers(record: dict) -> list[float]:
        found = [record[k] for k in ("score", "logit") if k in record]
        return found + [d[k] for d in record.get("results", []) for k in ("score", "logit")]

    def rest(record: dict) -> dict:
        out = {k: v for k, v in record.items() if k not in ("score", "logit", "results")}
        out["results"] = [
            {k: v for k, v in d.items() if k not in ("score", "logit")} for d in record.get("results", [])
        ]
        return out

    assert [rest(r) for r in got] == [rest(r) for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert numbers(a) == pytest.approx(numbers(b), abs=1e-5)


def invoke(args: list[str], stdin: bytes | None = None):
    return runner.invoke(app, args, input=stdin)


# --- every source refuses a resume from another input (CLI: exit 2, one line) -------------------------


def _copy_beir(tmp_path: Path) -> Path:
    folder = tmp_path / "beir"
    shutil.copytree(BEIR, folder)
    return folder


Case = tuple[list[str], bytes | None, Callable[[], None] | None, Source, Task[Any, Any]]


def _cases(tmp_path: Path) -> dict[str, Case]:
    """name -> (CLI args without -o, stdin, a change that makes it another input, the source and task the
    command builds)."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes((SAMPLES / "pairs.jsonl").read_bytes())
    beir = _copy_beir(tmp_path)
    queries = beir / "queries.jsonl"
    trec_args = ["rerank", "--run", str(beir / "bm25.run"), "--corpus", str(beir / "corpus.jsonl")]
    trec_args += ["--queries", str(queries)]
    stdin = (SAMPLES / "pairs.jsonl").read_bytes()

    def change_queries() -> None:
        lines = queries.read_text(encoding="utf-8").splitlines()
        first = orjson.loads(lines[0])
        first["text"] = "a different question altogether"
        queries.write_text("\n".join([orjson.dumps(first).decode(), *lines[1:]]) + "\n", encoding="utf-8")

    inline, score, rerank = ItemsSource([]), ScoreTask(), RerankTask()
    return {
        "file": (
            ["score", str(pairs)],
            None,
            lambda: pairs.write_bytes(pairs.read_bytes().replace(CHANGE[0], CHANGE[1], 1)),
            JsonlSource(str(pairs)),
            score,
        ),
        "stdin": (["score", "-"], stdin, None, JsonlSource("-"), score),
        "inline score": (["score", "-q", "what is json", "-p", "a json file", "-p", "a csv file"], None, None, inline, score),
        "inline rerank": (["rerank", "-q", "what is json", "-d", "a json file", "-d", "a csv file"], None, None, inline, rerank),
        "trec run": (trec_args, None, change_queries, TrecSource(str(beir / "bm25.run"), str(beir / "corpus.jsonl"), str(queries)), rerank),
    }  # fmt: skip


CHANGE = ("软件著作权登记".encode(), "商标注册".encode())  # on line 1 of pairs.jsonl
CHANGED_ARGS = {
    "inline score": ["score", "-q", "what is json", "-p", "an xml file", "-p", "a csv file"],
    "inline rerank": ["rerank", "-q", "what is json", "-d", "an xml file", "-d", "a csv file"],
}


@pytest.mark.parametrize("case", ["file", "stdin", "inline score", "inline rerank", "trec run"])
def test_resume_refuses_another_input_for_every_source(tiny_xlmr: Path, tmp_path: Path, case: str):
    args, stdin, change, source, task = _cases(tmp_path)[case]
    out = tmp_path / "out.jsonl"
    model = ["-m", str(tiny_xlmr), "-f", "jsonl", "--quiet"]
    full = invoke([*args, *model, "-o", str(out)], stdin)
    assert full.exit_code == 0, full.output

    stop_after(out, source, task, LoaderConfig(model=str(tiny_xlmr)))
    with out.open("ab") as handle:  # as a crash leaves it: half a record past the checkpoint
        handle.write(b'{"query": "half a rec')
    before = snapshot(out, Checkpoint.path_for(str(out)))
    if change is not None:
        change()
    if stdin is not None:
        stdin = stdin.replace(*CHANGE, 1)
    changed_args = CHANGED_ARGS.get(case, args)
    refused = invoke([*changed_args, *model, "-o", str(out), "--resume"], stdin)
    assert refused.exit_code == 2, refused.output
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.output
    assert (
        "--resume: the last record of" in refused.stderr and "does not match input line 1" in refused.stderr
    )
    assert snapshot(out, Checkpoint.path_for(str(out))) == before  # not even the half record cut


def test_resume_refuses_another_queries_file_by_name(tiny_xlmr: Path, tmp_path: Path):
    beir = _copy_beir(tmp_path)
    other = tmp_path / "other-queries.jsonl"
    shutil.copy(beir / "queries.jsonl", other)
    out = tmp_path / "out.jsonl"
    base = ["rerank", "--run", str(beir / "bm25.run"), "--corpus", str(beir / "corpus.jsonl")]
    model = ["-m", str(tiny_xlmr), "-f", "jsonl", "--quiet", "-o", str(out)]
    assert invoke([*base, "--queries", str(beir / "queries.jsonl"), *model]).exit_code == 0
    source = TrecSource(str(beir / "bm25.run"), str(beir / "corpus.jsonl"), str(beir / "queries.jsonl"))
    stop_after(out, source, RerankTask(), LoaderConfig(model=str(tiny_xlmr)))
    before = snapshot(out, Checkpoint.path_for(str(out)))
    refused = invoke([*base, "--queries", str(other), *model, "--resume"])
    assert refused.exit_code == 2
    assert "refusing to mix inputs" in refused.stderr and str(other) in refused.stderr
    assert snapshot(out, Checkpoint.path_for(str(out))) == before


@pytest.mark.parametrize("case", ["file", "stdin", "inline score", "inline rerank", "trec run"])
def test_resume_with_the_same_input_equals_an_uninterrupted_run(tiny_xlmr: Path, tmp_path: Path, case: str):
    args, stdin, _, source, task = _cases(tmp_path)[case]
    out = tmp_path / "out.jsonl"
    model = ["-m", str(tiny_xlmr), "-f", "jsonl", "-o", str(out)]
    assert invoke([*args, *model, "--quiet"], stdin).exit_code == 0
    expected = jsonl(out.read_bytes())
    stop_after(out, source, task, LoaderConfig(model=str(tiny_xlmr)))
    with out.open("ab") as handle:  # half a record past the checkpoint: cut by the resume
        handle.write(b'{"query": "half a rec')
    resumed = invoke([*args, *model, "--resume"], stdin)
    assert resumed.exit_code == 0, resumed.output
    assert_same_records(jsonl(out.read_bytes()), expected)
    # The summary counts this run's work on both sides, then the file's total.
    summary = re.search(
        r"resumed after line (\d+): read (\d+) more lines?, wrote (\d+) \w+ \((\d+) in ", resumed.stderr
    )
    assert summary, resumed.stderr
    done, read, wrote, total = map(int, summary.groups())
    assert total == len(expected) == done + read and wrote == read  # one record per input line here
    assert not Checkpoint.path_for(str(out)).exists()


def test_beir_source_refuses_a_resume_from_other_queries(tiny_xlmr: Path, tmp_path: Path):
    beir = _copy_beir(tmp_path)
    reranker = Reranker(str(tiny_xlmr), device="cpu")
    out = tmp_path / "out.jsonl"
    source = BeirSource.of(str(beir), str(beir / "bm25.run"))
    full = reranker.rerank_file(source, str(out), top_k=3)
    assert full.written == 8 and not full.stopped
    expected = jsonl(out.read_bytes())
    stop_after(out, source, RerankTask(top_k=3), reranker.config)
    queries = beir / "queries.jsonl"
    queries.write_text(queries.read_text(encoding="utf-8").replace("软件著作权", "商标"), encoding="utf-8")
    with pytest.raises(ResumeError, match="does not match input line 1"):
        reranker.rerank_file(source, str(out), top_k=3, resume=True)
    queries.write_text((BEIR / "queries.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    assert reranker.rerank_file(source, str(out), top_k=3, resume=True).written == 8
    assert_same_records(jsonl(out.read_bytes()), expected)


def test_resume_refuses_an_input_shorter_than_the_output(tiny_xlmr: Path, tmp_path: Path):
    source = tmp_path / "in.jsonl"
    lines = (SAMPLES / "pairs.jsonl").read_bytes().splitlines(keepends=True)
    source.write_bytes(b"".join(lines))
    out = tmp_path / "out.jsonl"
    reranker = Reranker(str(tiny_xlmr), device="cpu")
    reranker.score_file(str(source), str(out))
    stop_after(out, JsonlSource(str(source)), ScoreTask(), reranker.config, records=3)
    source.write_bytes(b"".join(lines[:2]))
    with pytest.raises(ResumeError, match="the input ends at line 2"):
        reranker.score_file(str(source), str(out), resume=True)


# --- the Python file API: interrupted, resumed, equal to an uninterrupted run --------------------------


def _stop_after(checks: int) -> Callable[[], bool]:
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > checks

    return stop


def _many_pairs(tmp_path: Path, copies: int = 3) -> Path:
    rows = jsonl((SAMPLES / "mixed_pairs.jsonl").read_bytes())
    path = tmp_path / "pairs.jsonl"
    with path.open("wb") as out:
        for copy in range(copies):
            for row in rows:
                out.write(orjson.dumps({**row, "id": f"{row['id']}-{copy}"}) + b"\n")
    return path


def test_score_file_interrupted_and_resumed_equals_an_uninterrupted_run(tiny_xlmr: Path, tmp_path: Path):
    source = _many_pairs(tmp_path)
    reranker = Reranker(str(tiny_xlmr), device="cpu", batch_size=8, max_length=128)
    full, out = tmp_path / "full.jsonl", tmp_path / "out.jsonl"
    complete = reranker.score_file(str(source), str(full))
    assert not complete.stopped and complete.written == 720 and complete.stats.pairs == 720

    stopped = reranker.score_file(str(source), str(out), stop=_stop_after(60))
    assert stopped.stopped and 0 < stopped.written < 720
    assert len(jsonl(out.read_bytes())) == stopped.written
    assert Checkpoint.load(str(out)).written == stopped.written
    with pytest.raises(UsageError, match="JSONL"):  # a checkpointed resume needs JSONL output
        reranker.score_file(str(source), str(out), resume=True, format="tsv")
    resumed = reranker.score_file(str(source), str(out), resume=True)
    assert not resumed.stopped and resumed.resumed_after == stopped.last_line
    assert_same_records(jsonl(out.read_bytes()), jsonl(full.read_bytes()))
    assert not Checkpoint.path_for(str(out)).exists()


def test_rerank_file_interrupted_and_resumed_equals_an_uninterrupted_run(tiny_xlmr: Path, tmp_path: Path):
    rows = jsonl((SAMPLES / "mixed_pairs.jsonl").read_bytes())
    source = tmp_path / "candidates.jsonl"
    with source.open("wb") as handle:
        for q in range(120):
            docs = [{"id": f"d{q}-{i}", "text": rows[(q * 7 + i) % len(rows)]["passage"]} for i in range(5)]
            handle.write(
                orjson.dumps({"qid": f"q{q}", "query": rows[q % len(rows)]["query"], "documents": docs})
            )
            handle.write(b"\n")
    reranker = Reranker(str(tiny_xlmr), device="cpu", batch_size=8, max_length=128)
    full, out = tmp_path / "full.jsonl", tmp_path / "out.jsonl"
    complete = reranker.rerank_file(str(source), str(full), top_k=3)
    assert complete.written == 120 and complete.stats.queries == 120
    assert complete.top1_replacement_rate is not None

    stopped = reranker.rerank_file(str(source), str(out), top_k=3, stop=_stop_after(50))
    assert stopped.stopped and 0 < stopped.written < 120
    resumed = reranker.rerank_file(str(source), str(out), top_k=3, resume=True)
    assert not resumed.stopped
    got, expected = jsonl(out.read_bytes()), jsonl(full.read_bytes())
    assert [r["qid"] for r in got] == [r["qid"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert [d["id"] for d in a["results"]] == [d["id"] for d in b["results"]]
        assert [d["score"] for d in a["results"]] == pytest.approx(
            [d["score"] for d in b["results"]], abs=1e-6
        )


def test_a_fixed_bad_line_is_read_again_on_resume(tiny_xlmr: Path, tmp_path: Path):
    """The failing line is not accounted for: after fixing it, --resume scores it (nothing is lost)."""
    source = _many_pairs(tmp_path, copies=2)
    lines = source.read_bytes().splitlines(keepends=True)
    good = lines[399]
    lines[399] = b'{"query": "missing its passage"}\n'
    source.write_bytes(b"".join(lines))
    reranker = Reranker(str(tiny_xlmr), device="cpu", batch_size=8, max_length=128)
    out = tmp_path / "out.jsonl"
    with pytest.raises(InputError, match="line 400") as failure:
        reranker.score_file(str(source), str(out))
    assert "resume=True" in str(failure.value) and "--" not in str(failure.value)
    assert len(jsonl(out.read_bytes())) == 399
    lines[399] = good
    source.write_bytes(b"".join(lines))
    reranker.score_file(str(source), str(out), resume=True)
    got = jsonl(out.read_bytes())
    assert len(got) == 480 and got[399]["id"] == orjson.loads(good)["id"]


def test_rows_output_and_report(tiny_xlmr: Path):
    from bge_rerank_cli.inputs import inline_score_items

    items = inline_score_items("what is json", ["a json file", "a csv file", "a json file"])
    job = Job(ItemsSource(items), ScoreTask(), Output(format="rows"))
    reranker = Reranker(str(tiny_xlmr), device="cpu", max_length=4096)
    report = run(job, lambda: reranker.scorer)
    assert report.rows is not None and [row[0].passage for row in report.rows] == [i.passage for i in items]
    assert isinstance(report.rows[0][0], ScoreItem)
    assert report.stats.pairs == 3 and report.stats.unique_pairs == 2 and report.written == 3
    assert report.max_length == reranker.scorer.max_length < 4096  # clamped to the model, reported
    assert report.model_limit == report.max_length and report.scorer["backend"] == "torch"


# --- errors in the library's words, flags in the CLI's ----------------------------------------------


def _library_errors(tmp_path: Path) -> list[BgeRerankError]:
    from bge_rerank_cli.backends import load_scorer
    from bge_rerank_cli.demo import demo_queries
    from bge_rerank_cli.inputs import inline_rerank_item, read_docs_file
    from bge_rerank_cli.jobs import beir_paths

    gone = tmp_path / "gone.jsonl"  # its checkpoint is there, the output is not
    Checkpoint.path_for(str(gone)).write_bytes(b"{}")
    attempts: list[Callable[[], object]] = [
        lambda: Reranker(max_length=4),
        lambda: LoaderConfig(device="gpu"),
        lambda: LoaderConfig(dtype="fp8"),
        lambda: LoaderConfig(quantize="int8", backend="torch"),
        lambda: LoaderConfig(batch_size=0),
        lambda: LoaderConfig(batch_tokens=0),
        lambda: ScoreOptions(long_docs="split"),
        lambda: ScoreOptions(chunk_overlap=-1),
        lambda: ScoreOptions(max_chunks=0),
        lambda: Job(JsonlSource("x"), ScoreTask(), on_error="maybe"),
        lambda: Output(format="xml"),
        lambda: demo_queries("fr"),
        lambda: beir_paths(tmp_path, "test"),
        lambda: read_docs_file(str(tmp_path / "none.txt")),
        lambda: inline_rerank_item("q", []),
        lambda: load_scorer(LoaderConfig(model=str(tmp_path / "no-model"))),
        lambda: run(Job(JsonlSource("x"), ScoreTask(), Output(), resume=True), lambda: None),  # type: ignore[arg-type,return-value]
        lambda: run(Job(JsonlSource("x"), ScoreTask(), Output("o.tsv", "tsv"), resume=True), lambda: None),  # type: ignore[arg-type,return-value]
        lambda: run(Job(JsonlSource("x"), ScoreTask(), Output(str(gone)), resume=True), lambda: None),  # type: ignore[arg-type,return-value]
        lambda: run(Job(JsonlSource("x"), ScoreTask(), Output("o.trec", "trec")), lambda: None),  # type: ignore[arg-type,return-value]
    ]  # fmt: skip
    errors = []
    for attempt in attempts:
        with pytest.raises(BgeRerankError) as caught:
            attempt()
        errors.append(caught.value)
    return errors


def test_library_errors_name_python_settings_and_the_cli_names_flags(tmp_path: Path):
    errors = _library_errors(tmp_path)
    for error in errors:
        assert "--" not in str(error), str(error)
    by_text = {str(e): e.describe(flag_name) for e in errors}
    assert "max_length must be at least 8 tokens, got 4." in by_text
    assert (
        by_text["max_length must be at least 8 tokens, got 4."]
        == "--max-length must be at least 8 tokens, got 4."
    )
    cli = "\n".join(by_text.values())
    for flag in ("--device", "--dtype", "--quantize int8 needs --backend onnx", "--long-docs", "--on-error",
                 "--format", "--lang", "--beir", "--docs-file", "-d TEXT", "--resume needs -o FILE",
                 "--format trec", "--resume: "):  # fmt: skip
        assert flag in cli, flag
    assert isinstance(errors[0], ValueError)  # a wrong argument is a ValueError to Python callers


def test_jobs_and_backends_import_neither_typer_nor_rich():
    code = (
        "import sys\n"
        "import bge_rerank_cli.jobs, bge_rerank_cli.backends, bge_rerank_cli.api, bge_rerank_cli.engine\n"
        "import bge_rerank_cli.backends.hf, bge_rerank_cli.backends.tokenization, bge_rerank_cli.ray_engine\n"
        "import bge_rerank_cli.backends.torch_scorer, bge_rerank_cli.backends.onnx_scorer, bge_rerank_cli.ir\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'rich', 'click', 'torch'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.strip() == b"[]"


def test_ray_splits_lines_exactly_as_a_local_job():
    data = b'\xef\xbb\xbf{}\r\n\n{"a": 1}\r\r\n  \nlast without newline'
    import io

    assert list(read_lines(split_lines(data))) == list(read_lines(io.BytesIO(data)))
    assert [n for n, _ in read_lines(split_lines(data))] == [1, 2, 3, 4, 5]


def test_help_lists_choices_and_keeps_install_hints():
    text = invoke(["score", "--help"]).stdout
    for choices in ("<auto|jsonl|table|chart|tsv>", "<truncate|chunk>", "<fail|skip>", "<local|ray>",
                    "<auto|fp32|fp16|bf16>", "<auto|torch|onnx>", "<none|int8>", "[auto|cpu|cuda|cuda:N|mps]"):  # fmt: skip
        assert choices in text, choices
    assert "pip install 'bge-rerank-cli[ray]'" in text and "pip install 'bge-rerank-cli[onnx]'" in text
    assert "pip install 'bge-rerank-cli[serve]'" in invoke(["serve", "--help"]).stdout
    assert "--max-\n" not in text and "bge-\n" not in text  # wrapped at spaces, never inside a word


def test_depth_limits_candidates_for_any_input(tiny_xlmr: Path):
    line = orjson.dumps({"query": "json", "documents": ["a json file", "read json", "csv", "xml", "yaml"]})
    result = invoke(["rerank", "-m", str(tiny_xlmr), "-f", "jsonl", "--depth", "2"], line + b"\n")
    assert result.exit_code == 0, result.output
    (row,) = jsonl(result.stdout_bytes)
    assert sorted(d["index"] for d in row["results"]) == [0, 1]


def test_a_job_stopped_before_its_first_group_is_resumable(tiny_xlmr: Path, tmp_path: Path):
    reranker = Reranker(str(tiny_xlmr), device="cpu")
    out = tmp_path / "out.jsonl"
    stopped = reranker.score_file(str(SAMPLES / "pairs.jsonl"), str(out), stop=lambda: True)
    assert stopped.stopped and stopped.written == 0 and Checkpoint.path_for(str(out)).exists()
    resumed = reranker.score_file(str(SAMPLES / "pairs.jsonl"), str(out), resume=True)
    assert resumed.written == 10 and len(jsonl(out.read_bytes())) == 10
