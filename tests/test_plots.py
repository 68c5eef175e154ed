"""Pictures of eval and bench (`--plot FILE.png|.svg`) and eval's per-query chart on the terminal."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest
from rich.cells import cell_len
from rich.console import Console
from typer.testing import CliRunner

from bge_rerank_cli.cli import app
from bge_rerank_cli.cli.views import render_query_changes
from bge_rerank_cli.plots import QueryChange, most_changed, query_changes
from tests.conftest import REPO, SAMPLES

pytest.importorskip("matplotlib", reason="the [plot] extra is not installed")

runner = CliRunner()
BEIR = SAMPLES / "beir-sample"
RUN = BEIR / "bm25.run"
QIDS = [f"q-{lang}-{i}" for lang in ("zh", "en") for i in range(1, 5)]
PNG = b"\x89PNG\r\n\x1a\n"


def svg_texts(path: Path) -> str:
    """Every text of an SVG (it must parse): matplotlib writes text as <text> with svg.fonttype none."""
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return "\n".join("".join(e.itertext()) for e in root.iter() if e.tag.endswith("}text"))


def changes(n: int) -> list[QueryChange]:
    """``n`` queries, changes spread from +0.5 to -0.5, every third with its first result replaced."""
    made = [QueryChange(f"query-{i:03d}", 0.5, 0.5 + 0.5 - i / (n - 1), i % 3 == 0) for i in range(n)]
    return sorted(made, key=lambda c: (-c.delta, c.qid))


def test_query_changes_and_the_most_changed():
    per_query = {  # as ir.compare(..., per_query=True) reports them
        "b": {"nDCG@10": {"before": 0.8, "after": 0.1}, "top1_replaced": False},
        "a": {"nDCG@10": {"before": 0.2, "after": 0.9}, "top1_replaced": True},
    }
    found = query_changes(per_query)
    assert [(c.qid, c.top1_replaced) for c in found] == [("a", True), ("b", False)]
    assert found[0].delta == pytest.approx(0.7)

    many = changes(11)  # deltas +0.5, +0.4, ... -0.5, the largest |changes| at both ends
    head, tail, hidden = most_changed(many, 4)
    assert [c.qid for c in head] == ["query-000", "query-001"]
    assert [c.qid for c in tail] == ["query-009", "query-010"]
    assert len(hidden) == 7 and most_changed(many, 20) == (many, [], [])
    lopsided = [QueryChange(f"g{i}", 0.0, 0.1 * i, False) for i in range(9, 0, -1)]
    lopsided.append(QueryChange("loss", 0.5, 0.45, False))
    head, tail, _ = most_changed(lopsided, 3)  # a small loss is not shown for balance
    assert [c.qid for c in head] == ["g9", "g8", "g7"] and tail == []


@pytest.mark.parametrize("width", [80, 200])
def test_the_per_query_chart_fits_the_terminal(width: int):
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system="standard")
    render_query_changes(changes(30), console)
    plain = Console(file=io.StringIO(), width=width, record=True)
    render_query_changes(changes(30), plain)
    lines = plain.export_text().splitlines()
    assert all(cell_len(line) <= width for line in lines), max(lines, key=cell_len)
    assert lines[0].startswith("nDCG@10 per query, before → after (15 better, 15 worse, 0 the same of 30)")
    rows = [line for line in lines if line.startswith("query-")]
    assert len(rows) == 20  # the 20 most changed: 10 gains on top, 10 losses below
    assert rows[0].startswith("query-000 0.500 → 1.000 +0.500 │") and rows[0].endswith("│ new top-1")
    assert "○━" in rows[1] and rows[1].rstrip("│ ").endswith("━▸")
    assert "new top-1" not in rows[1]  # query-001: up to 0.966, the same first result
    assert rows[-1].startswith("query-029 0.500 → 0.000 -0.500 │◂━")
    assert any("… 10 more, Δ" in line for line in lines)
    assert lines[-1].startswith("○ before, ▸ or ◂ after (0..1 axis) · new top-1")
    coloured = out.getvalue().splitlines()
    gain = next(line for line in coloured if "query-000" in line)
    loss = next(line for line in coloured if "query-029" in line)
    assert "\x1b[32m" in gain and "\x1b[31m" in loss  # green better, red worse


def test_eval_draws_the_chart_on_a_table_and_an_svg(tiny_xlmr: Path, tmp_path: Path):
    svg = tmp_path / "eval.svg"
    args = ["eval", "--beir", str(BEIR), "--run", str(RUN), "-m", str(tiny_xlmr), "--plot", str(svg)]
    result = runner.invoke(app, [*args, "-f", "table"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(cell_len(line) <= 80 for line in lines), max(lines, key=cell_len)
    chart = lines[lines.index(next(line for line in lines if line.startswith("nDCG@10 per query"))) :]
    rows = [line for line in chart if line.startswith("q-")]
    assert sorted(row.split()[0] for row in rows) == sorted(QIDS)
    report = orjson.loads(runner.invoke(app, [*args[:-2], "-f", "json", "--per-query", "--quiet"]).stdout)
    for row in rows:  # each row's values and top-1 marker agree with the JSON report
        qid, before, _, after = row.split()[:4]
        values = report["per_query"][qid]
        assert (float(before), float(after)) == pytest.approx(
            (values["nDCG@10"]["before"], values["nDCG@10"]["after"]), abs=5e-4
        )
        assert row.endswith("new top-1") == values["top1_replaced"]
    assert sum(v["top1_replaced"] for v in report["per_query"].values()) == report["top1_replaced"]
    assert f"plot written to {svg}" in result.stderr
    texts = svg_texts(svg)
    assert all(qid in texts for qid in QIDS)
    assert "nDCG@10 per query" in texts and f"model {tiny_xlmr}" in texts
    assert "random-weight stand-in" in texts and "mean 0.697 → " in texts


def test_eval_plot_of_a_reranked_run_is_a_png_and_svgs_are_reproducible(tmp_path: Path):
    """No model needed with --reranked; stdout stays pure JSON; the same figures give the same SVG."""
    args = ["eval", "--beir", str(BEIR), "--run", str(RUN), "--reranked", str(RUN), "-f", "json", "--plot"]
    png = tmp_path / "eval.PNG"
    result = runner.invoke(app, [*args, str(png)])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout)["queries"] == 8
    assert png.read_bytes().startswith(PNG)
    first, second = tmp_path / "a.svg", tmp_path / "b.svg"
    for svg in (first, second):
        assert runner.invoke(app, [*args, str(svg), "--quiet"]).exit_code == 0
    assert first.read_bytes() == second.read_bytes()
    texts = svg_texts(first)
    assert f"reranked run {RUN}" in texts and "random-weight" not in texts
    assert "8 queries: 0 better, 0 worse, 8 the same; top-1 replaced in 0" in texts


def test_bench_plot(tiny_xlmr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BGE_RERANK_CACHE", str(tmp_path / "cache"))
    svg = tmp_path / "bench.svg"
    args = ["bench", "-m", str(tiny_xlmr), "--setups", "torch-fp32,torch-fp16", "--limit", "2"]
    result = runner.invoke(app, [*args, "--no-ceilings", "-f", "json", "--plot", str(svg)])
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.stdout)
    assert (
        report["random_weights"] is True and report["model"] == str(tiny_xlmr) and report["revision"] is None
    )
    assert [(r["setup"], r["backend"], r["dtype"]) for r in report["results"]] == [
        ("torch-fp32", "torch", "fp32"),
        ("torch-fp16", "torch", "fp16"),
    ]
    assert "stand-in model" in result.stderr and "its speed is real" in result.stderr
    texts = svg_texts(svg)
    assert "torch-fp32" in texts and "torch-fp16" in texts and "cpu fp32" in texts
    assert "pairs/s" in texts and "p50 / p95" in texts
    assert f"bge-rerank bench: {tiny_xlmr} on cpu, 2 requests" in texts
    assert "random-weight stand-in model: speed is real, scores are not" in texts
    assert "of ceiling" not in texts  # --no-ceilings: nothing measured, nothing claimed


@pytest.mark.parametrize("command", ["eval", "bench"])
@pytest.mark.parametrize("name", ["out.pdf", "out"])
def test_a_plot_name_without_png_or_svg_is_a_usage_error(command: str, name: str):
    result = runner.invoke(app, [command, "--beir", str(BEIR), "--run", str(RUN), "--plot", name]
                           if command == "eval" else [command, "--plot", name])  # fmt: skip
    assert result.exit_code == 2
    assert f"error: --plot {name}: " in result.stderr and "ending in .png or .svg" in result.stderr


BLOCKED = """
import runpy, sys
sys.modules["matplotlib"] = None  # as if the [plot] extra were not installed: import matplotlib fails
sys.argv = ["bge-rerank", *{args!r}]
runpy.run_module("bge_rerank_cli", run_name="__main__")
"""


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "--beir", str(BEIR), "--run", str(RUN), "--plot", "out.svg"],
        ["bench", "--setups", "torch-fp32", "--plot", "out.png"],
    ],
)
def test_without_matplotlib_plot_fails_first_and_names_the_extra(args: list[str], tmp_path: Path):
    """Before any model loads: the model given does not even exist, and it is matplotlib that is named."""
    code = BLOCKED.format(args=[*args, "-m", str(tmp_path / "no-such-model")])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=60,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        "error: --plot needs matplotlib, which is not installed: pip install 'bge-rerank-cli[plot]'"
    ]
    assert result.stdout == b"" and not (tmp_path / "out.svg").exists()


def test_matplotlib_is_imported_only_for_a_plot(tmp_path: Path):
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['bge-rerank', 'eval', '--beir', {str(BEIR)!r}, '--run', {str(RUN)!r}, '--reranked', "
        f"{str(RUN)!r}, '-f', 'json']\n"
        "try:\n    runpy.run_module('bge_rerank_cli', run_name='__main__')\n"
        "except SystemExit as exc:\n    assert not exc.code\n"
        "print('MPL=' + str('matplotlib' in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, cwd=REPO, timeout=60)
    assert b"MPL=False" in result.stderr, result.stderr.decode()[-1000:]
