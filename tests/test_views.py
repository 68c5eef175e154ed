"""Terminal views at 80 and 200 columns: nothing a person must read or copy is cut without saying so."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from bge_rerank_cli.cli.views import fit, render_rerank_tables, render_score_table
from bge_rerank_cli.records import Document, RankedDocument, RerankResult, Scored, ScoreItem

LONG_ZH = (
    "使用json.load()函数可以从文件对象中读取JSON数据：with open('data.json') as f: data = json.load(f)。" * 3
)
LONG_EN = (
    "Use json.load on an open file object to read a JSON file into Python objects, then work with dicts. " * 3
)


def rendered(draw, rows, width: int, chart: bool) -> str:
    buffer = io.StringIO()
    draw(rows, Console(file=buffer, width=width, color_system=None, highlight=False), chart)
    return buffer.getvalue()


def rerank_rows() -> list[RerankResult]:
    docs = [Document(i, text, {"id": f"d{i}"}) for i, text in enumerate([LONG_ZH, "短", LONG_EN])]
    ranked = tuple(RankedDocument(d.index, r, d.text, Scored(logit), d.fields)
                   for r, (d, logit) in enumerate(zip(docs[::-1], (2.0, 0.1, -1.5), strict=True), start=1))  # fmt: skip
    return [RerankResult("如何读取JSON文件?", ranked, 1, {}, 3)]


@pytest.mark.parametrize("width", [80, 200])
def test_rerank_chart_lines_fit_and_keep_their_bars(width: int):
    from rich.cells import cell_len

    text = rendered(render_rerank_tables, rerank_rows(), width, chart=True)
    lines = text.splitlines()
    assert all(cell_len(line) <= width for line in lines), [line for line in lines if cell_len(line) > width]
    bars = [line for line in lines if "█" in line or "░" in line][:3]
    assert len(bars) == 3 and all(sum(c in "█░" for c in line) == 20 for line in bars)
    assert "↑2" in text and "↓2" in text and "bar: score 0..1" in text  # moves and their legend
    assert "…(+" in text and "chars)" in text  # where text was cut, and how much


@pytest.mark.parametrize("width", [80, 200])
def test_rerank_table_cuts_text_only_at_the_end_with_a_count(width: int):
    text = rendered(render_rerank_tables, rerank_rows(), width, chart=False)
    assert text.count("…") == text.count("…(+")  # no silent mid-cell ellipsis from the table
    assert "was: position in the input" in text
    bars = [line for line in text.splitlines() if "█" in line or "░" in line]
    assert all(sum(c in "█░" for c in line) == 20 for line in bars)


@pytest.mark.parametrize("width", [80, 200])
def test_score_chart_fits(width: int):
    from rich.cells import cell_len

    rows = [
        (ScoreItem(i, "q", passage), Scored(0.5 * i)) for i, passage in enumerate([LONG_ZH, LONG_EN, "x"], 1)
    ]
    text = rendered(render_score_table, rows, width, chart=True)
    assert all(cell_len(line) <= width for line in text.splitlines())
    assert "…(+" in text


def test_fit_counts_cells_and_says_how_much_was_cut():
    from rich.cells import cell_len

    assert fit("short", 20) == "short"
    cut = fit(LONG_ZH, 30)
    assert cell_len(cut) <= 30 and cut.endswith(" chars)") and cut.startswith("使用json")
    hidden = int(cut.rsplit("+", 1)[1].split()[0])
    assert len(cut.split("…")[0]) + hidden == len(" ".join(LONG_ZH.split()))
