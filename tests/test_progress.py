"""The progress line of a score/rerank job: input lines of a file's total with an ETA, stdin said so,
and the runner telling it where it stands (from a resumed job's resume point on)."""

from __future__ import annotations

import io
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from bge_rerank_cli.cli import console as term
from bge_rerank_cli.jobs import ItemsSource, JsonlSource
from tests.conftest import SAMPLES


def _rendered(monkeypatch, source, steps) -> str:
    screen = io.StringIO()
    fake_terminal = Console(file=screen, force_terminal=True, width=80, highlight=False, soft_wrap=True)
    monkeypatch.setattr(term, "err_console", fake_terminal)
    with term.job_progress(False, source) as meter:
        assert meter is not None
        deadline = time.monotonic() + 10
        while isinstance(source, JsonlSource) and source.path and meter.total is None:
            assert time.monotonic() < deadline, "the line count never arrived"
            time.sleep(0.01)
        for line, pairs in steps:
            meter.at_line(line)
            meter.advance(pairs)
        progress: Progress = meter.bar
        wide = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
        wide.print(progress.make_tasks_table(progress.tasks))
        return wide.file.getvalue()  # type: ignore[attr-defined]


def test_a_file_shows_lines_of_its_total_and_an_eta(monkeypatch, tmp_path: Path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b'{"query": "q", "passage": "p"}\n' * 999 + b'{"query": "q", "passage": "p"}'
    )  # no final LF
    text = _rendered(monkeypatch, JsonlSource(str(path)), [(0, 0), (250, 250)])
    assert "250/1,000 lines" in text and "eta" in text and "pairs/s" in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_stdin_says_it_has_no_total(monkeypatch):
    text = _rendered(monkeypatch, JsonlSource(None), [(0, 0), (40, 40)])
    assert "40 lines (stdin: no total)" in text and "eta" not in text


def test_inline_items_count_records(monkeypatch):
    text = _rendered(monkeypatch, ItemsSource([]), [(0, 0), (3, 3)])
    assert "3 records" in text and "stdin" not in text


def test_quiet_or_piped_shows_nothing():
    with term.job_progress(True, JsonlSource(None)) as meter:
        assert meter is None


def test_the_runner_reports_positions_from_the_resume_point(tiny_xlmr: Path, tmp_path: Path):
    """Where scoring starts (0, then a resumed job's resume point), then each written group, rising."""
    from bge_rerank_cli.backends import load_scorer
    from bge_rerank_cli.config import LoaderConfig, ScoreOptions
    from bge_rerank_cli.jobs import Job, Output, ScoreTask, run

    config = LoaderConfig(model=str(tiny_xlmr), device="cpu", batch_size=2)
    out = str(tmp_path / "out.jsonl")
    source = tmp_path / "in.jsonl"
    source.write_bytes((SAMPLES / "pairs.jsonl").read_bytes() * 100)

    def job(resume: bool) -> Job:
        return Job(JsonlSource(str(source)), ScoreTask(ScoreOptions()), Output(out, "jsonl", None),
                   on_error="fail", resume=resume)  # fmt: skip

    seen: list[int] = []
    stopped = run(job(False), lambda: load_scorer(config), config=config, stop=lambda: len(seen) >= 3,
                  position=seen.append)  # fmt: skip
    assert stopped.stopped and seen[0] == 0 and seen == sorted(seen) and 0 < seen[-1] < 1000, seen
    resumed: list[int] = []
    run(job(True), lambda: load_scorer(config), config=config, position=resumed.append)
    assert resumed[0] == seen[-1] and resumed[-1] == 1000 and resumed == sorted(resumed), resumed


def test_the_python_api_warns_of_random_weights_once(tiny_xlmr: Path):
    """Where the CLI prints its stand-in line, Python gets a RandomWeightsWarning naming the caller's line."""
    import warnings

    from bge_rerank_cli import Reranker
    from bge_rerank_cli.errors import RandomWeightsWarning

    reranker = Reranker(str(tiny_xlmr), device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reranker.score("q", ["p"])
        reranker.rerank("q", ["p", "r"])
    (warning,) = [w for w in caught if issubclass(w.category, RandomWeightsWarning)]
    assert "RANDOM weights" in str(warning.message) and warning.filename == __file__


def test_quiet_keeps_the_stand_in_warning(tiny_xlmr: Path):
    from tests.conftest import run_cli

    for command in (["score", "-q", "a", "-p", "b"], ["rerank", "-q", "a", "-d", "b", "-d", "c"]):
        result = run_cli([*command, "-m", str(tiny_xlmr), "--quiet", "-f", "jsonl"])
        assert result.returncode == 0
        assert result.stderr.decode().count("RANDOM weights") == 1, result.stderr.decode()
