"""A resumed job never mixes two settings in one file (#21).

Each refusal is provoked for real (the tiny on-disk models, the CLI through CliRunner, the Python API),
and each asserts the exit code (or ResumeError), the exact per-setting lines, and that the output, the
errors file and the checkpoint are byte for byte as they were. Stopped jobs are genuine where the test
is about one setting (a job that fails at a bad last line keeps its checkpoint, written by the runner
itself; the issue's own case is stopped through the API's ``stop=``); the per-source cases fabricate the
state with the runner's own settings (tests/jobstate.py).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bge_rerank_cli import Reranker
from bge_rerank_cli.config import LoaderConfig
from bge_rerank_cli.errors import ResumeError
from bge_rerank_cli.jobs import BeirSource, Checkpoint, JsonlSource, RerankTask, ScoreTask
from tests.conftest import REPO, SAMPLES, run_cli
from tests.jobstate import snapshot, stop_after
from tests.test_jobs import BEIR, _cases, assert_same_records, invoke, jsonl

BAD = b'{"query": "a line missing its passage"}\n'
GOOD = b'{"query": "what is json", "passage": "JSON is a text format for data.", "id": "fixed"}\n'
BAD_RERANK = b'{"query": "a line missing its documents"}\n'
GOOD_RERANK = b'{"query": "what is json", "documents": ["JSON is a text format.", "CSV"], "qid": "fixed"}\n'


@pytest.fixture(scope="module", autouse=True)
def _fresh_scorers() -> None:
    """Scorers loaded from now on: an earlier test module may have left one in load_scorer's cache whose
    backend ``auto`` was resolved under a monkeypatched recommendation (the lines below name torch)."""
    from bge_rerank_cli.backends import load_scorer

    load_scorer.cache_clear()


def difference_lines(text: str) -> list[str]:
    """The per-setting lines of a refusal (indented by two spaces)."""
    return [line for line in text.splitlines() if line.startswith("  ")]


def files(out: Path, *more: Path) -> list[Path]:
    return [out, Checkpoint.path_for(str(out)), *more]


# --- the issue's own case: a job started at --max-length 256, stopped, resumed without the flag ---------


def test_a_job_started_at_max_length_256_resumes_only_at_256(tiny_xlmr: Path, tmp_path: Path):
    rows = jsonl((SAMPLES / "mixed_pairs.jsonl").read_bytes())
    source = tmp_path / "pairs.jsonl"
    source.write_bytes(
        b"".join(orjson.dumps({**r, "id": f"{r['id']}-{c}"}) + b"\n" for c in range(2) for r in rows)
    )
    common = ["score", str(source), "-m", str(tiny_xlmr), "-f", "jsonl", "--quiet", "--batch-size", "8"]
    full, out = tmp_path / "full.jsonl", tmp_path / "out.jsonl"
    assert invoke([*common, "--max-length", "256", "-o", str(full)]).exit_code == 0

    def after_first_group() -> bool:
        path = Checkpoint.path_for(str(out))
        return path.exists() and orjson.loads(path.read_bytes())["written"] > 0

    reranker = Reranker(str(tiny_xlmr), device="cpu", batch_size=8, max_length=256)
    stopped = reranker.score_file(str(source), str(out), stop=after_first_group)  # a real stop
    assert stopped.stopped and 0 < stopped.written < 480
    before = snapshot(*files(out))

    refused = invoke([*common, "-o", str(out), "--resume"])
    assert refused.exit_code == 2, refused.output
    assert difference_lines(refused.stderr) == ["  --max-length: 256 in the checkpoint, 512 now"]
    assert f"run without --resume, or delete {out} and {out}.progress" in refused.stderr
    assert snapshot(*files(out)) == before

    resumed = invoke([*common, "--max-length", "256", "-o", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert_same_records(jsonl(out.read_bytes()), jsonl(full.read_bytes()))
    assert not Checkpoint.path_for(str(out)).exists()


def test_a_setting_known_without_the_model_is_refused_before_it_loads(tiny_xlmr: Path, tmp_path: Path):
    """The max length (against the recorded model limit, once the model files match), an explicit
    backend, the task's options: compared before the model loads, so a refusal costs no load (torch never
    imported)."""
    out = tmp_path / "out.jsonl"
    source = str(SAMPLES / "pairs.jsonl")
    Reranker(str(tiny_xlmr), device="cpu", max_length=256).score_file(source, str(out))
    stop_after(out, JsonlSource(source), ScoreTask(), LoaderConfig(model=str(tiny_xlmr), max_length=256))
    code = (
        "import sys\n"
        "from bge_rerank_cli import Reranker\n"
        "from bge_rerank_cli.errors import ResumeError\n"
        "try:\n"
        f"    Reranker({str(tiny_xlmr)!r}).score_file({source!r}, {str(out)!r}, resume=True)\n"
        "except ResumeError as exc:\n"
        "    print(exc.describe().splitlines()[1], 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "max_length: 256 in the checkpoint, 512 now False"


# --- every source kind gets the same check ------------------------------------------------------------


@pytest.mark.parametrize("case", ["file", "stdin", "inline score", "inline rerank", "trec run"])
def test_every_source_refuses_a_changed_setting(tiny_xlmr: Path, tmp_path: Path, case: str):
    args, stdin, _, source, task = _cases(tmp_path)[case]
    out = tmp_path / "out.jsonl"
    model = ["-m", str(tiny_xlmr), "-f", "jsonl", "--quiet", "-o", str(out)]
    assert invoke([*args, *model, "--max-length", "256"], stdin).exit_code == 0
    expected = jsonl(out.read_bytes())
    stop_after(out, source, task, LoaderConfig(model=str(tiny_xlmr), max_length=256))
    before = snapshot(*files(out))

    refused = invoke([*args, *model, "--resume"], stdin)
    assert refused.exit_code == 2, refused.output
    assert difference_lines(refused.stderr) == ["  --max-length: 256 in the checkpoint, 512 now"]
    assert snapshot(*files(out)) == before

    resumed = invoke([*args, *model, "--max-length", "256", "--resume"], stdin)
    assert resumed.exit_code == 0, resumed.output
    assert_same_records(jsonl(out.read_bytes()), expected)


@pytest.mark.parametrize("kind", ["file", "beir"])
def test_the_python_api_refuses_a_changed_setting_in_its_own_words(
    tiny_xlmr: Path, tmp_path: Path, kind: str
):
    out = tmp_path / "out.jsonl"
    if kind == "file":
        path: Any = str(SAMPLES / "pairs.jsonl")
        source, task = JsonlSource(path), ScoreTask()
        first = Reranker(str(tiny_xlmr), device="cpu", max_length=256).score_file
        again = Reranker(str(tiny_xlmr), device="cpu").score_file
    else:
        path = source = BeirSource.of(str(BEIR), str(BEIR / "bm25.run"))
        task = RerankTask()
        first = Reranker(str(tiny_xlmr), device="cpu", max_length=256).rerank_file
        again = Reranker(str(tiny_xlmr), device="cpu").rerank_file
    first(path, str(out))
    expected = jsonl(out.read_bytes())
    stop_after(out, source, task, LoaderConfig(model=str(tiny_xlmr), device="cpu", max_length=256))
    before = snapshot(*files(out))
    with pytest.raises(ResumeError) as refused:
        again(path, str(out), resume=True)
    assert difference_lines(str(refused.value)) == ["  max_length: 256 in the checkpoint, 512 now"]
    assert "run without resume=True" in str(refused.value) and "--" not in str(refused.value)
    assert snapshot(*files(out)) == before
    assert first(path, str(out), resume=True).written == len(expected)
    assert_same_records(jsonl(out.read_bytes()), expected)


def test_the_ray_engine_refuses_to_resume(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-0.jsonl").write_bytes(b'{"score": 0.5}\n')
    args = ["score", str(SAMPLES / "pairs.jsonl"), "--engine", "ray", "-o", str(out), "--resume"]
    refused = invoke(args)
    assert refused.exit_code == 2
    assert "--resume is for the local engine" in refused.stderr
    assert sorted(p.name for p in out.iterdir()) == ["part-0.jsonl"]
    assert (out / "part-0.jsonl").read_bytes() == b'{"score": 0.5}\n'


# --- one line per setting that changes a record --------------------------------------------------------


def _failed_job(tmp_path: Path, model: Path, command: str, flags: list[str]) -> tuple[Path, list[str]]:
    """A real job stopped by a bad last line (exit 3): its output and checkpoint are the runner's own.
    Returns the input and the command line without -o; the job's output is tmp_path/out.jsonl."""
    sample = SAMPLES / ("pairs.jsonl" if command == "score" else "rerank.jsonl")
    source = tmp_path / "in.jsonl"
    source.write_bytes(sample.read_bytes() + (BAD if command == "score" else BAD_RERANK))
    args = [command, str(source), "-m", str(model), "-f", "jsonl", "--quiet"]
    failed = invoke([*args, *flags, "-o", str(tmp_path / "out.jsonl")])
    assert failed.exit_code == 3, failed.output
    assert Checkpoint.path_for(str(tmp_path / "out.jsonl")).exists()
    return source, args


def _fix(source: Path, command: str) -> None:
    bad, good = (BAD, GOOD) if command == "score" else (BAD_RERANK, GOOD_RERANK)
    source.write_bytes(source.read_bytes().replace(bad, good))


CHANGED = [
    # (command, flags the job started with, flags on resume, the lines expected; {a}/{b}: paths)
    ("score", [], ["--backend", "onnx"], ["--backend: torch (auto) in the checkpoint, onnx now"]),
    ("score", [], ["--quantize", "int8"], ["--quantize: none in the checkpoint, int8 now"]),  # before loading
    ("score", [], ["--dtype", "bf16"], ["--dtype: fp32 (auto) in the checkpoint, bf16 now"]),
    ("score", ["--max-length", "256"], [], ["--max-length: 256 in the checkpoint, 512 now"]),
    ("score", [], ["--max-length", "600"], ["--max-length: 384 (the default for max length 512) in the "
                                            "checkpoint, 450 (the default for max length 600) now"]),
    ("score", [], ["--long-docs", "chunk"], ["--long-docs: truncate in the checkpoint, chunk now"]),
    ("score", ["--long-docs", "chunk"], ["--long-docs", "chunk", "--chunk-overlap", "8"],
     ["--chunk-overlap: 64 in the checkpoint, 8 now"]),
    ("score", ["--long-docs", "chunk"], ["--long-docs", "chunk", "--max-chunks", "2"],
     ["--max-chunks: 64 in the checkpoint, 2 now"]),
    ("score", ["--max-length", "256"], ["--long-docs", "chunk"], ["--max-length: 256 in the checkpoint, 512 now",
                                                                  "--long-docs: truncate in the checkpoint, chunk now"]),
    ("rerank", ["--top-k", "2"], [], ["--top-k: 2 in the checkpoint, none now"]),
    ("rerank", [], ["--min-score", "0.5"], ["--min-score: none in the checkpoint, 0.5 now"]),
    ("rerank", ["--depth", "2"], ["--depth", "3"], ["--depth: 2 in the checkpoint, 3 now"]),
    ("score", ["--errors", "{a}"], ["--errors", "{b}"], ["--errors: {a} in the checkpoint, {b} now"]),
    ("score", ["--errors", "{a}"], [], ["--errors: {a} in the checkpoint, none now"]),
]  # fmt: skip


@pytest.mark.parametrize(("command", "start", "again", "lines"), CHANGED)
def test_each_changed_setting_is_refused_with_its_line(
    tiny_xlmr: Path, tmp_path: Path, command: str, start: list[str], again: list[str], lines: list[str]
):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"

    def fill(items: list[str]) -> list[str]:
        return [s.replace("{a}", str(a)).replace("{b}", str(b)) for s in items]

    out = tmp_path / "out.jsonl"
    source, args = _failed_job(tmp_path, tiny_xlmr, command, fill(start))
    _fix(source, command)
    before = snapshot(*files(out, a, b))
    refused = invoke([*args, *fill(again), "-o", str(out), "--resume"])
    assert refused.exit_code == 2, refused.output
    assert difference_lines(refused.stderr) == ["  " + line for line in fill(lines)]
    assert snapshot(*files(out, a, b)) == before


def test_another_model_is_refused_before_it_loads(tiny_xlmr: Path, tiny_bert: Path, tmp_path: Path):
    out = tmp_path / "out.jsonl"
    source, args = _failed_job(tmp_path, tiny_xlmr, "score", [])
    _fix(source, "score")
    before = snapshot(*files(out))
    other = [a if a != str(tiny_xlmr) else str(tiny_bert) for a in args]
    refused = invoke([*other, "-o", str(out), "--resume"])
    assert refused.exit_code == 2, refused.output
    assert difference_lines(refused.stderr) == [f"  --model: {tiny_xlmr} in the checkpoint, {tiny_bert} now"]
    assert snapshot(*files(out)) == before


def test_the_model_is_its_files_not_its_folder(tiny_xlmr: Path, tmp_path: Path):
    """A byte-identical copy elsewhere is the same model; the same folder with other weights is not, and
    is refused before the model loads (the changed weights here are garbage: loading them would fail)."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_xlmr, copy)
    out = tmp_path / "out.jsonl"
    source, args = _failed_job(tmp_path, tiny_xlmr, "score", [])
    expected_first = out.read_bytes()
    _fix(source, "score")
    moved = [a if a != str(tiny_xlmr) else str(copy) for a in args]
    resumed = invoke([*moved, "-o", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert out.read_bytes().startswith(expected_first) and len(jsonl(out.read_bytes())) == 11

    out.unlink()
    source, args = _failed_job(tmp_path, copy, "score", [])
    _fix(source, "score")
    weights = copy / "model.safetensors"
    weights.write_bytes(b"\0" * weights.stat().st_size)  # same name, same size, other content
    before = snapshot(*files(out))
    refused = run_cli([*args, "-o", str(out), "--resume"])  # a fresh process: no model loaded yet
    stderr = refused.stderr.decode()
    assert refused.returncode == 2, stderr  # loading the garbage would have failed with exit 4
    (line,) = difference_lines(stderr)
    assert line.startswith(f"  --model: {copy} (sha256:") and f"in the checkpoint, {copy} (sha256:" in line
    assert snapshot(*files(out)) == before


ACCEPTED = [
    ["--batch-size", "3"],
    ["--batch-tokens", "300"],
    ["--device", "cpu"],
    ["--dtype", "fp32"],  # what auto resolved to on a CPU
    ["--backend", "torch"],  # what auto resolved to
    ["--max-length", "512"],
    ["--chunk-overlap", "8", "--max-chunks", "2"],  # no windows in truncate mode
    ["--on-error", "skip"],
    ["--errors", "{b}"],  # a job that had no errors file may get one
]


@pytest.mark.parametrize("again", ACCEPTED, ids=lambda flags: " ".join(flags))
def test_changes_that_write_the_same_records_are_accepted(tiny_xlmr: Path, tmp_path: Path, again: list[str]):
    b = tmp_path / "b.jsonl"
    again = [s.replace("{b}", str(b)) for s in again]
    out = tmp_path / "out.jsonl"
    source, args = _failed_job(tmp_path, tiny_xlmr, "score", [])
    _fix(source, "score")
    resumed = invoke([*args, *again, "-o", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    expected = invoke([*args, "-o", str(tmp_path / "full.jsonl")])
    assert expected.exit_code == 0
    assert_same_records(jsonl(out.read_bytes()), jsonl((tmp_path / "full.jsonl").read_bytes()))


def test_a_decoder_binds_its_template_and_instruction_not_prefix_reuse(tiny_qwen3: Path, tmp_path: Path):
    out = tmp_path / "out.jsonl"
    source, args = _failed_job(tmp_path, tiny_qwen3, "score", [])
    _fix(source, "score")
    before = snapshot(*files(out))
    instruction = invoke([*args, "--instruction", "Judge it", "-o", str(out), "--resume"])
    assert instruction.exit_code == 2, instruction.output
    (line,) = difference_lines(instruction.stderr)
    assert line.startswith("  --instruction: 'Given a web search query")
    assert line.endswith("(the model's default) in the checkpoint, 'Judge it' now")
    template = invoke([*args, "--template", "bge-gemma", "-o", str(out), "--resume"])
    assert template.exit_code == 2, template.output
    assert difference_lines(template.stderr) == [
        "  --template: qwen3-reranker (auto) in the checkpoint, bge-gemma now"  # its instruction follows
    ]
    assert snapshot(*files(out)) == before
    resumed = invoke([*args, "--no-prefix-reuse", "-o", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert invoke([*args, "-o", str(tmp_path / "full.jsonl")]).exit_code == 0
    assert_same_records(jsonl(out.read_bytes()), jsonl((tmp_path / "full.jsonl").read_bytes()))


# --- what scores may not depend on ------------------------------------------------------------------


def test_batch_size_and_token_budget_do_not_change_scores(tiny_model: Path):
    """Scores at several batch sizes and token budgets agree within 1e-5 (logits within 1e-5 of their
    size): they differ by fp32 rounding only, as the next test shows."""
    base = ["score", str(SAMPLES / "mixed_pairs.jsonl"), "-m", str(tiny_model), "-f", "jsonl", "--quiet"]
    runs = [
        invoke([*base, *flags])
        for flags in ([], ["--batch-size", "1"], ["--batch-size", "3", "--batch-tokens", "300"])
    ]
    assert all(r.exit_code == 0 for r in runs), [r.output for r in runs]
    first, *others = [jsonl(r.stdout_bytes) for r in runs]
    assert len(first) == 240
    for other in others:
        for a, b in zip(first, other, strict=True):
            assert abs(a["score"] - b["score"]) <= 1e-5
            assert abs(a["logit"] - b["logit"]) <= 1e-5 * max(1.0, abs(a["logit"]))
            assert {k: v for k, v in a.items() if k not in ("score", "logit")} == {
                k: v for k, v in b.items() if k not in ("score", "logit")
            }


def test_padding_changes_nothing_in_exact_arithmetic(tiny_model: Path):
    """What a batch's composition changes is padding; in float64 padding moves no logit (no padded token
    leaks into a pair's score), so the fp32 differences above are rounding, not a bug."""
    import copy

    import torch

    from bge_rerank_cli.records import Pair

    scorer: Any = Reranker(str(tiny_model), device="cpu").scorer
    model = copy.deepcopy(scorer._model).double()
    rows = jsonl((SAMPLES / "mixed_pairs.jsonl").read_bytes())[:40]
    encoded = scorer.encode([Pair(r["query"], r["passage"]) for r in rows])
    longest = max(encoded, key=lambda e: len(e.ids))
    with torch.inference_mode():
        for enc in encoded:
            alone = model(**scorer._features([enc])).logits[0, 0].item()
            padded = model(**scorer._features([enc, longest])).logits[0, 0].item()
            assert abs(alone - padded) < 1e-10


# --- faults: what each gets --------------------------------------------------------------------------


def _v1(out: Path) -> None:  # a checkpoint as bge-rerank wrote them before #21
    out.write_bytes(out.read_bytes().splitlines(keepends=True)[0])
    Checkpoint.path_for(str(out)).write_bytes(orjson.dumps({
        "input": str(SAMPLES / "pairs.jsonl"), "last_line": 1, "last_record_line": 1,
        "output_bytes": out.stat().st_size, "errors_bytes": 0, "written": 1, "skipped": 0, "blank": 0, "version": 1,
    }))  # fmt: skip


FAULTS = {
    "old checkpoint": (_v1, "was written by an older bge-rerank (checkpoint version 1) that did not record the job's settings"),
    "corrupt checkpoint": (lambda out: Checkpoint.path_for(str(out)).write_bytes(b'{"input": "pai'), "is unreadable"),
    "malformed settings": (lambda out: Checkpoint.path_for(str(out)).write_bytes(
        Checkpoint.path_for(str(out)).read_bytes().replace(b'"shown":"score"', b'"shown":1')), "is unreadable"),
    "newer checkpoint": (lambda out: Checkpoint.path_for(str(out)).write_bytes(
        Checkpoint.path_for(str(out)).read_bytes().replace(b'"version":2', b'"version":3')), "checkpoint version 3, this one reads 2"),
    "missing output": (lambda out: out.unlink(), "does not exist, but its checkpoint"),
    "finished job": (lambda out: Checkpoint.remove(str(out)), "no checkpoint"),
    "cut output": (lambda out: out.write_bytes(out.read_bytes()[:10]), "holds 10 bytes but its checkpoint counts"),
}  # fmt: skip


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_is_refused_and_changes_nothing(tiny_xlmr: Path, tmp_path: Path, fault: str):
    out = tmp_path / "out.jsonl"
    args = ["score", str(SAMPLES / "pairs.jsonl"), "-m", str(tiny_xlmr), "-f", "jsonl", "--quiet"]
    assert invoke([*args, "-o", str(out)]).exit_code == 0
    stop_after(
        out, JsonlSource(str(SAMPLES / "pairs.jsonl")), ScoreTask(), LoaderConfig(model=str(tiny_xlmr))
    )
    make, message = FAULTS[fault]
    make(out)
    before = snapshot(*files(out))
    refused = invoke([*args, "-o", str(out), "--resume"])
    assert refused.exit_code == 2, refused.output
    assert message in refused.stderr and "Traceback" not in refused.output
    assert "without --resume" in refused.stderr  # how to start over
    assert snapshot(*files(out)) == before


def test_an_errors_file_cut_after_the_stop_is_refused(tiny_xlmr: Path, tmp_path: Path):
    rejected = tmp_path / "rejected.jsonl"
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n" + (SAMPLES / "pairs.jsonl").read_bytes() + BAD)  # a blank line is logged
    out = tmp_path / "out.jsonl"
    args = ["score", str(source), "-m", str(tiny_xlmr), "-f", "jsonl", "--quiet", "--errors", str(rejected)]
    assert invoke([*args, "-o", str(out)]).exit_code == 3
    assert Checkpoint.load(str(out)).errors_bytes == rejected.stat().st_size > 0
    rejected.write_bytes(b"")
    _fix(source, "score")
    before = snapshot(*files(out, rejected))
    refused = invoke([*args, "-o", str(out), "--resume"])
    assert refused.exit_code == 2, refused.output
    assert f"{rejected} holds 0 bytes but its checkpoint counts" in refused.stderr
    assert snapshot(*files(out, rejected)) == before


def test_nothing_to_resume_starts_the_job(tiny_xlmr: Path, tmp_path: Path):
    """make-style: --resume (resume=True) with neither the output nor its checkpoint starts from the
    beginning, and says so; CLI and API alike."""
    args = ["score", str(SAMPLES / "pairs.jsonl"), "-m", str(tiny_xlmr), "-f", "jsonl"]
    out = tmp_path / "out.jsonl"
    started = invoke([*args, "-o", str(out), "--resume"])
    assert started.exit_code == 0, started.output
    assert (
        f"note: nothing to resume (no {out}, no {out}.progress): starting from the beginning."
        in started.stderr
    )
    assert len(jsonl(out.read_bytes())) == 10 and not Checkpoint.path_for(str(out)).exists()
    again = invoke([*args, "-o", str(out), "--resume"])  # a finished job's output is not resumed
    assert again.exit_code == 2 and "no checkpoint" in again.stderr

    api_out = tmp_path / "api.jsonl"
    report = Reranker(str(tiny_xlmr), device="cpu").score_file(
        str(SAMPLES / "pairs.jsonl"), str(api_out), resume=True
    )
    assert report.fresh_start and report.written == 10 and report.resumed_after == 0
    assert_same_records(jsonl(api_out.read_bytes()), jsonl(out.read_bytes()))


# --- the README's Python example runs as written -----------------------------------------------------


def _python_blocks(page: Path) -> list[str]:
    """The page's Python examples that use the library (not a third-party client's)."""
    text = page.read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]
    return [b for b in blocks if "bge_rerank_cli" in b or b.startswith("report = reranker.")]


def test_the_readme_python_example_runs_as_written(
    tiny_xlmr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The README's example (and the Python API page's first two), with the model id as the only change:
    its rerank_file(..., resume=True) starts the job on a first run."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(SAMPLES / "rerank.jsonl", tmp_path / "candidates.jsonl")
    shutil.copy(SAMPLES / "pairs.jsonl", tmp_path / "pairs.jsonl")
    readme = _python_blocks(REPO / "README.md")
    api_page = _python_blocks(REPO / "docs" / "python-api.md")[:2]
    for code in [readme[0], "\n".join(api_page)]:
        assert '"BAAI/bge-reranker-v2-m3"' in code
        namespace: dict[str, Any] = {}
        exec(
            compile(code.replace('"BAAI/bge-reranker-v2-m3"', repr(str(tiny_xlmr))), "example", "exec"),
            namespace,
        )
        report = namespace["report"]
        assert report.written == 6 and report.fresh_start and not report.stopped
        assert len(jsonl((tmp_path / "reranked.jsonl").read_bytes())) == 6
        (tmp_path / "reranked.jsonl").unlink()
