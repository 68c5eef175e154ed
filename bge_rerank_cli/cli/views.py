"""Terminal views of results: Rich tables and score bar charts (the CLI's ``table`` and ``chart`` formats).

User text is escaped so ``[brackets]`` in passages are shown, not parsed as markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..records import RerankResult, Scored, ScoreItem

if TYPE_CHECKING:
    from ..plots import QueryChange

TEXT_WIDTH = 120  # characters of passage text shown in tables
STAND_IN = (
    "[bold yellow]stand-in model:[/] {model} has RANDOM weights (built by tools/random_model.py): "
    "its scores and orders are meaningless."
)


def bar(score: float, width: int = 20) -> str:
    filled = max(0, min(width, round(score * width)))
    return "█" * filled + "░" * (width - filled)


def elide(text: str, limit: int = TEXT_WIDTH) -> str:
    """Whitespace folded; past ``limit`` characters cut at the end with ``…(+N chars)`` saying how much."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    keep = max(1, limit - 14)
    return f"{flat[:keep]}…(+{len(flat) - keep} chars)"


def fit(text: str, cells: int) -> str:
    """:func:`elide` by terminal cells instead of characters (CJK characters take two cells)."""
    from rich.cells import cell_len

    flat = " ".join(text.split())
    if cell_len(flat) <= cells:
        return flat
    keep = len(flat)
    while keep > 1:
        candidate = f"{flat[:keep]}…(+{len(flat) - keep} chars)"
        if cell_len(candidate) <= cells:
            return candidate
        keep = min(keep - 1, keep * cells // max(1, cell_len(candidate)))
    return f"{flat[:1]}…(+{len(flat) - 1} chars)"


def print_fitted(console: Any, head: str, text: str) -> None:
    """One line: ``head`` (Rich markup), then ``text`` cut with :func:`fit` to the cells left on the line."""
    from rich.text import Text

    room = max(16, console.width - Text.from_markup(head).cell_len - 1)
    console.print(head + escape(fit(text, room)), overflow="ignore", no_wrap=True, crop=False)


LEGEND = "[dim]bar: score 0..1 · was: position in the input · …(+N chars): text cut for display[/]"


def render_score_table(rows: list[tuple[ScoreItem, Scored]], console: Any, chart: bool = False) -> None:
    if chart:
        render_score_chart(rows, console)
        return
    table = Table(title="scores", title_justify="left", show_lines=False, expand=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("score", justify="right")
    table.add_column("logit", justify="right")
    table.add_column("query", overflow="fold", max_width=40)
    table.add_column("passage", overflow="fold")
    for item, scored in rows:
        table.add_row(
            str(item.line),
            f"{scored.score:.4f}",
            f"{scored.logit:.3f}",
            escape(elide(item.query, 60)),
            escape(elide(item.passage)),
        )
    console.print(table)


def render_score_chart(rows: list[tuple[ScoreItem, Scored]], console: Any) -> None:
    """One line per pair: its line number, a score bar of fixed length, the score, the passage cut to fit."""
    console.print("[bold]scores[/]")
    for item, scored in rows:
        print_fitted(
            console, f"{item.line:>5} [green]{bar(scored.score)}[/] {scored.score:.4f}  ", item.passage
        )
    console.print("[dim]bar: score 0..1 · …(+N chars): text cut for display[/]")


def render_rerank_tables(results: list[RerankResult], console: Any, chart: bool = False) -> None:
    for result in results:
        if not result.candidates:  # the first stage found nothing: no table to draw
            console.print(f"[bold]{escape(elide(result.query, 100))}[/]  [dim](no candidates)[/]")
            continue
        (render_rerank_chart if chart else render_rerank_table)(result, console)
    if results:
        console.print(
            LEGEND if not chart else "[dim]bar: score 0..1 · ↑N/↓N: places moved from the input order[/]"
        )


def _title(result: RerankResult) -> str:
    return (
        f"[bold]{escape(elide(result.query, 100))}[/]  [dim]({len(result.results)} of {result.candidates})[/]"
    )


def _label(doc: Any) -> str:
    label = doc.fields.get("id") or doc.fields.get("title")
    return f"[cyan]{escape(str(label))}[/] " if label is not None else ""


def render_rerank_table(result: RerankResult, console: Any) -> None:
    table = Table(title=_title(result), title_justify="left", expand=False)
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    table.add_column("", justify="left", no_wrap=True, min_width=20)
    table.add_column("was", justify="right", style="dim")
    table.add_column("text", overflow="fold")
    for doc in result.results:
        text = _label(doc) + escape(elide(doc.text, TEXT_WIDTH))
        table.add_row(
            str(doc.rank), f"{doc.score:.4f}", f"[green]{bar(doc.score)}[/]", str(doc.index + 1), text
        )
    console.print(table)


def render_rerank_chart(result: RerankResult, console: Any) -> None:
    """Per query, one line per document: rank, a score bar of fixed length, the score, how far it moved."""
    console.print(_title(result))
    for doc in result.results:
        moved = doc.index + 1 - doc.rank
        plain = f"↑{moved}" if moved > 0 else f"↓{-moved}" if moved < 0 else "="
        colour = "green" if moved > 0 else "red" if moved < 0 else "dim"
        arrow = f"[{colour}]{plain}[/]" + " " * max(0, 3 - len(plain))
        print_fitted(
            console,
            f"{doc.rank:>4} [green]{bar(doc.score)}[/] {doc.score:.4f} {arrow} " + _label(doc),
            doc.text,
        )


def render_query_changes(
    changes: Sequence[QueryChange], console: Any, measure: str = "nDCG@10", limit: int = 20
) -> None:
    """One line per query, most improved first: its id, ``measure`` before → after, the change, and an
    arrow on a 0..1 axis from the value before (○) to the value after (green better, red worse), marked
    ``new top-1`` where reranking replaced the first result. Past ``limit`` queries only the most changed
    are shown and a line says how many are not. Fits the console's width (80 columns and up)."""
    from rich.cells import cell_len

    from ..plots import most_changed

    head, tail, hidden = most_changed(changes, limit)
    better, worse = sum(c.direction > 0 for c in changes), sum(c.direction < 0 for c in changes)
    console.print(
        f"[bold]{measure} per query, before → after[/] [dim]({better} better, {worse} worse, "
        f"{len(changes) - better - worse} the same of {len(changes)})[/]",
        no_wrap=True,
        overflow="ellipsis",
    )
    width = max(console.width, 60)
    qid_cells = min(max((cell_len(c.qid) for c in head + tail), default=5), max(8, width // 5))
    qid_cells = max(qid_cells, 5)
    marker = "new top-1"
    track = max(10, min(60, width - qid_cells - 35))  # 35: the values, the change, the marker, the blanks
    axis = "0" + "0.5".center(track - 2) + "1"  # over the first and the last cell of the track
    console.print(
        Text(f"{'query':<{qid_cells}} {'before → after':>13} {'Δ':>6}  {axis}", style="dim"),
        no_wrap=True,
        overflow="crop",
    )
    for change in head:
        console.print(_change_line(change, qid_cells, track, marker), no_wrap=True, overflow="crop")
    if hidden:
        low, high = hidden[-1].delta, hidden[0].delta
        console.print(
            f"[dim]{'':<{qid_cells}} … {len(hidden)} more, Δ {low:+.3f} to {high:+.3f} (--per-query lists all)[/]",
            no_wrap=True,
            overflow="ellipsis",
        )
    for change in tail:
        console.print(_change_line(change, qid_cells, track, marker), no_wrap=True, overflow="crop")
    console.print(
        f"[dim]○ before, ▸ or ◂ after (0..1 axis) · {marker}: the first result was replaced[/]",
        no_wrap=True,
        overflow="ellipsis",
    )


def _change_line(change: QueryChange, qid_cells: int, track: int, marker: str) -> Text:
    from rich.cells import cell_len, set_cell_size

    qid = change.qid if cell_len(change.qid) <= qid_cells else set_cell_size(change.qid, qid_cells - 1) + "…"
    colour = {1: "green", -1: "red", 0: "dim"}[change.direction]
    line = Text(set_cell_size(qid, qid_cells) + " ")
    line.append(f"{change.before:.3f} → {change.after:.3f} ")
    line.append(f"{change.delta:+.3f}" if change.direction else f"{'=':>6}", style=colour)
    line.append(" │")
    start, end = (round(min(max(v, 0.0), 1.0) * (track - 1)) for v in (change.before, change.after))
    cells = [" "] * track
    if start == end:
        cells[end] = "●"
    else:
        low, high = sorted((start, end))
        cells[low : high + 1] = ["━"] * (high - low + 1)
        cells[start], cells[end] = "○", "▸" if end > start else "◂"
    first, last = min(start, end), max(start, end)
    line.append("".join(cells[:first]))
    line.append("".join(cells[first : last + 1]), style=colour)
    line.append("".join(cells[last + 1 :]) + "│")
    if change.top1_replaced:
        line.append(" " + marker, style="bold yellow")
    return line
