"""Terminal views of results: Rich tables and score bar charts (the CLI's ``table`` and ``chart`` formats).

User text is escaped so ``[brackets]`` in passages are shown, not parsed as markup.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from ..records import RerankResult, Scored, ScoreItem

TEXT_WIDTH = 120  # characters of passage text shown in tables


def bar(score: float, width: int = 20) -> str:
    filled = max(0, min(width, round(score * width)))
    return "█" * filled + "░" * (width - filled)


def elide(text: str, limit: int = TEXT_WIDTH) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def render_score_table(rows: list[tuple[ScoreItem, Scored]], console: Any, chart: bool = False) -> None:
    table = Table(title="scores", title_justify="left", show_lines=False, expand=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("score", justify="right")
    table.add_column("" if chart else "logit", justify="left" if chart else "right")
    table.add_column("query", overflow="ellipsis", max_width=40)
    table.add_column("passage", overflow="ellipsis")
    for item, scored in rows:
        third = f"[green]{bar(scored.score)}[/]" if chart else f"{scored.logit:.3f}"
        table.add_row(
            str(item.line),
            f"{scored.score:.4f}",
            third,
            escape(elide(item.query, 60)),
            escape(elide(item.passage)),
        )
    console.print(table)


def render_rerank_tables(results: list[RerankResult], console: Any, chart: bool = False) -> None:
    for result in results:
        render_rerank_table(result, console, chart)


def render_rerank_table(result: RerankResult, console: Any, chart: bool = False) -> None:
    title = (
        f"[bold]{escape(elide(result.query, 100))}[/]  [dim]({len(result.results)} of {result.candidates})[/]"
    )
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    table.add_column("", justify="left")
    table.add_column("was", justify="right", style="dim")
    table.add_column("text", overflow="ellipsis", max_width=50 if chart else None)
    for doc in result.results:
        label = doc.fields.get("id") or doc.fields.get("title")
        prefix = f"[cyan]{escape(str(label))}[/] " if label is not None else ""
        text = prefix + escape(elide(doc.text, 48 if chart else TEXT_WIDTH))
        table.add_row(
            str(doc.rank), f"{doc.score:.4f}", f"[green]{bar(doc.score)}[/]", str(doc.index + 1), text
        )
    console.print(table)
