"""Pictures of results: per-query before/after of an evaluation, and the speed of each bench setup.

The records drawn are the ones the library already produces (:class:`QueryChange` from an evaluation's
per-query values, :class:`~bge_rerank_cli.benchmark.Measurement` from a bench). Pictures are PNG or SVG,
by the file's suffix. matplotlib (the ``[plot]`` extra) is imported only when a picture is asked for, and
drawn on the Agg canvas of a :class:`~matplotlib.figure.Figure` of its own: pyplot's global state (and a
notebook's backend) is never touched. SVG is written reproducibly: text stays text, ids are salted with a
constant and no date is stored, so the same figures give the same file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError, option

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .benchmark import Measurement

INSTALL_HINT = "pip install 'bge-rerank-cli[plot]'"
FORMATS = ("png", "svg")
MOST_CHANGED = 40  # queries a per-query picture shows at most: the most changed, the rest counted

BETTER, WORSE, SAME, BEFORE = "#2e7d32", "#c62828", "#757575", "#9e9e9e"
_RC: dict[Any, Any] = {
    "svg.fonttype": "none",  # text stays <text>: small, searchable, diffable
    "svg.hashsalt": "bge-rerank",  # stable ids, so the same figures give the same file
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


@dataclass(frozen=True, slots=True)
class QueryChange:
    """One query's value of a measure before and after reranking, and whether its first result changed."""

    qid: str
    before: float
    after: float
    top1_replaced: bool

    @property
    def delta(self) -> float:
        return self.after - self.before

    @property
    def direction(self) -> int:
        """1 better, -1 worse, 0 the same (a float's rounding noise is no change)."""
        return 0 if abs(self.delta) < 1e-9 else 1 if self.delta > 0 else -1


def query_changes(per_query: Mapping[str, Mapping[str, Any]], measure: str = "nDCG@10") -> list[QueryChange]:
    """Each judged query's change of ``measure``, and whether its first result was replaced, from
    :func:`bge_rerank_cli.ir.compare`'s ``per_query``; most improved first (ties by query id)."""
    changes = [
        QueryChange(qid, values[measure]["before"], values[measure]["after"], bool(values["top1_replaced"]))
        for qid, values in per_query.items()
    ]
    return sorted(changes, key=lambda c: (-c.delta, c.qid))


def most_changed(
    changes: Sequence[QueryChange], limit: int
) -> tuple[list[QueryChange], list[QueryChange], list[QueryChange]]:
    """``changes`` (sorted by :func:`query_changes`) cut to the ``limit`` largest |changes|, as the gains
    end, the losses end and the hidden middle: the largest gains are at the front, the largest losses at
    the back, so the ``limit`` largest |changes| are a head and a tail of the sorted list."""
    if len(changes) <= limit:
        return list(changes), [], []
    head, tail = 0, len(changes)  # changes[:head] and changes[tail:] are shown
    while head + len(changes) - tail < limit:
        if abs(changes[head].delta) >= abs(changes[tail - 1].delta):
            head += 1
        else:
            tail -= 1
    return list(changes[:head]), list(changes[tail:]), list(changes[head:tail])


def plot_format(path: str | Path) -> str:
    """The picture format that ``path``'s suffix names (``png`` or ``svg``), checked with matplotlib's
    presence before any work, so that a run does not fail at its very end."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise UsageError(
            f"{option('plot', str(path))}: the picture's format comes from the file's suffix: "
            "give a name ending in .png or .svg."
        )
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            f"{option('plot')} needs matplotlib, which is not installed: {INSTALL_HINT}"
        ) from None
    return suffix


def draw_eval(
    changes: Sequence[QueryChange],
    path: str | Path,
    *,
    made_by: str,
    random_weights: bool = False,
    measure: str = "nDCG@10",
    limit: int = MOST_CHANGED,
) -> Path:
    """A dumbbell chart of each query's ``measure`` before (grey) and after (green better, red worse),
    largest gain on top; a star where reranking replaced the first result. Past ``limit`` queries only
    the most changed are drawn and the title says how many were left out. ``made_by`` names the model
    (or the reranked run) and ``random_weights`` says that it is a random-weight stand-in."""
    head, tail, hidden = most_changed(changes, limit)
    rows = head + tail
    with _figure(height=1.6 + 0.24 * max(len(rows), 3)) as fig:
        ax = fig.add_subplot()
        ys = list(range(len(rows), 0, -1))
        if hidden:  # a gap between the gains and the losses where the hidden ones would be
            ys = [y + 1 if i < len(head) else y for i, y in enumerate(ys)]
            ax.axhline(len(tail) + 1, color=SAME, linewidth=0.6, linestyle=":")
            ax.text(0.5, len(tail) + 1.15, f"{len(hidden)} queries with smaller changes not drawn",
                    ha="center", va="bottom", fontsize=8, color=SAME)  # fmt: skip
        for y, change in zip(ys, rows, strict=True):
            colour = {1: BETTER, -1: WORSE, 0: SAME}[change.direction]
            ax.plot([change.before, change.after], [y, y], color=colour, linewidth=2, zorder=1)
            ax.scatter([change.before], [y], s=28, facecolor="white", edgecolor=BEFORE, zorder=2)
            ax.scatter([change.after], [y], s=70 if change.top1_replaced else 28, color=colour, zorder=3,
                       marker="*" if change.top1_replaced else "o")  # fmt: skip
        ax.set_yticks(ys, [c.qid for c in rows])
        ax.set_ylim(0.3, max(ys, default=1) + 0.7)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel(f"{measure} (○ before reranking, ● after; ★ after, top-1 result replaced)")
        ax.set_ylabel("query (largest gain on top)")
        ax.grid(axis="x", linewidth=0.4, alpha=0.5)
        mean_before = sum(c.before for c in changes) / max(len(changes), 1)
        mean_after = sum(c.after for c in changes) / max(len(changes), 1)
        better = sum(c.direction > 0 for c in changes)
        worse = sum(c.direction < 0 for c in changes)
        replaced = sum(c.top1_replaced for c in changes)
        fig.suptitle(
            f"{measure} per query, before → after reranking: mean {mean_before:.3f} → {mean_after:.3f} "
            f"({mean_after - mean_before:+.3f})",
            x=0.01,
            ha="left",
            fontsize=10,
            fontweight="bold",
        )
        ax.set_title(
            f"{made_by}{_stand_in(random_weights, 'scores and orders are meaningless')}"
            f"\n{len(changes)} queries: {better} better, {worse} worse, "
            f"{len(changes) - better - worse} the same; top-1 replaced in {replaced}",
            loc="left",
            fontsize=9,
        )
        return _save(fig, path)


def draw_bench(
    results: Sequence[Measurement],
    path: str | Path,
    *,
    model: str,
    device: str,
    requests: int,
    random_weights: bool = False,
) -> Path:
    """Two panels sharing the setups: pairs/s of the batch job as bars (with % of the GEMM ceiling where
    measured), and latency per request, p50 as a bar and p95 as a tick. A failed setup is named, not drawn."""
    names = [f"{r.setup}\n{r.device or 'failed'}" for r in results]  # what it ran as: fp16 on a CPU is fp32
    ys = list(range(len(results), 0, -1))
    with _figure(height=1.9 + 0.42 * max(len(results), 2), width=8.0) as fig:
        speed, latency = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
        ok = [(y, r) for y, r in zip(ys, results, strict=True) if r.error is None]
        speed.barh([y for y, _ in ok], [r.pairs_per_s for _, r in ok], color="#1565c0", height=0.6)
        top = max((r.pairs_per_s for _, r in ok), default=1.0) or 1.0
        for y, r in ok:
            label = f" {r.pairs_per_s:,.{0 if r.pairs_per_s >= 100 else 1}f}" + (
                f" · {r.pct_of_ceiling:.0f}% of ceiling" if r.pct_of_ceiling else ""
            )
            speed.text(r.pairs_per_s, y, label, va="center", fontsize=8)
        for y, r in zip(ys, results, strict=True):
            if r.error is not None:
                speed.text(0, y, f" failed: {(r.error or '')[:70]}", va="center", fontsize=8, color=WORSE)
        speed.set_xlim(0, top * 1.45)
        speed.set_ylim(0.4, len(results) + 0.6)
        speed.set_yticks(ys, names)
        speed.set_ylabel("setup, and what it ran as")
        speed.set_xlabel("pairs/s, one batch job over all pairs (higher is better)")
        p50 = latency.barh([y for y, _ in ok], [r.latency_p50_ms for _, r in ok], color="#90caf9", height=0.6)
        p95 = latency.scatter([r.latency_p95_ms for _, r in ok], [y for y, _ in ok], marker="|", s=160,
                              color="#0d47a1", zorder=3)  # fmt: skip
        slowest = max((r.latency_p95_ms for _, r in ok), default=1.0) or 1.0
        for y, r in ok:
            latency.text(r.latency_p95_ms + slowest * 0.03, y, f"{r.latency_p50_ms:.0f} / {r.latency_p95_ms:.0f}",
                         va="center", fontsize=8)  # fmt: skip
        latency.set_xlim(0, slowest * 1.5)
        latency.set_xlabel("ms per request, p50 / p95 (lower is better)")
        latency.legend(
            [p50, p95],
            ["p50", "p95"],
            loc="lower right",
            bbox_to_anchor=(1.0, 1.0),
            ncols=2,
            fontsize=8,
            frameon=False,
        )
        pairs = next((r.pairs for r in results if r.error is None), 0)
        fig.suptitle(
            f"bge-rerank bench: {model} on {device}, {requests} requests, {pairs} pairs"
            + _stand_in(random_weights, "speed is real, scores are not"),
            x=0.01,
            ha="left",
            fontsize=9,
        )
        return _save(fig, path)


def _stand_in(random_weights: bool, meaning: str) -> str:
    return f"\nrandom-weight stand-in model: {meaning}" if random_weights else ""


@contextmanager
def _figure(height: float, width: float = 7.0) -> Iterator[Figure]:
    """A figure on its own Agg canvas, under this module's style (pyplot's global state untouched)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(width, height), layout="constrained")
        FigureCanvasAgg(fig)
        yield fig


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` in the format of ``path``'s suffix; SVG without a date, so reruns give the same file."""
    out = Path(path)
    fmt = plot_format(out)
    metadata: dict[str, Any] = {"Date": None} if fmt == "svg" else {}
    try:
        fig.savefig(out, format=fmt, metadata=metadata, dpi=150)
    except OSError as exc:
        raise UsageError(f"cannot write {option('plot', str(out))}: {exc.strerror or exc}.") from None
    return out
