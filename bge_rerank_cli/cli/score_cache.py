"""`bge-rerank score-cache stats|clear`: what the score cache holds, and emptying it."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import orjson
import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from ..errors import UsageError
from . import options as opt
from .console import err_console, out_console
from .exits import reported_errors
from .helpformat import PanelCommand

app = typer.Typer(
    name="score-cache",
    help="What the score cache (--score-cache) holds, and emptying it.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

StoreOption = Annotated[
    str,
    typer.Option(
        "--score-cache",
        metavar="default|PATH|URL",
        envvar="BGE_RERANK_SCORE_CACHE",
        help="The cache to look at: default (the SQLite file in bge-rerank's cache folder), a SQLite file, "
        "or a redis:// URL.",
    ),
]


def _store(spec: str) -> Any:
    store = opt.open_score_cache(spec or "default", None)
    assert store is not None
    return store


def _missing(store: Any) -> bool:
    """A SQLite cache not made yet: reported empty, not created by looking at it."""
    from ..score_cache import SqliteStore

    return isinstance(store, SqliteStore) and not store.path.exists()


def _read(store: Any, action: Any) -> Any:
    """``action(store)``, with a store that cannot be read or reached as one clear error line."""
    try:
        return action(store)
    except Exception as exc:
        raise UsageError(
            f"--score-cache {store.where}: cannot read it ({type(exc).__name__}: {exc}).",
            hint="A damaged SQLite cache can be deleted (with its -wal and -shm files): jobs make a new one.",
        ) from None
    finally:
        store.close()


def _size(n: int | None) -> str:
    from ..memory import human_bytes

    return "-" if n is None else human_bytes(n)


def _rate(hits: int, misses: int) -> str:
    from ..score_cache_common import hit_rate

    rate = hit_rate(hits, misses)
    return "-" if rate is None else f"{rate:.0%}"


@app.command(cls=PanelCommand)
def stats(
    score_cache: StoreOption = "default",
    fmt: opt.ReportFormatOption = opt.ReportFormat.AUTO,
) -> None:
    """Entries, size and hit rate of the score cache, in all and per model.

    Hits and misses count distinct pairs looked up, since the cache was made or last cleared.
    """
    from ..score_cache import StoreStats

    with reported_errors():
        store = _store(score_cache)
        if _missing(store):
            found = StoreStats(store.where, 0, 0, store.max_bytes, None, {})
        else:
            found = _read(store, lambda s: s.stats())
    if opt.wants_json(fmt):
        sys.stdout.buffer.write(
            orjson.dumps(found.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        )
        return
    table = Table(box=box.SIMPLE_HEAD, title=f"score cache {escape(found.where)}", title_justify="left")
    for column in ("model", "entries", "size", "hits", "misses", "hit rate"):
        table.add_column(column, justify="left" if column == "model" else "right", overflow="fold")
    models = sorted(found.models.items())
    for i, (name, model) in enumerate(models):
        table.add_row(escape(name), f"{model.entries:,}", _size(model.bytes), f"{model.hits:,}", f"{model.misses:,}",
                      _rate(model.hits, model.misses), end_section=i == len(models) - 1)  # fmt: skip
    table.add_row("[bold]all[/]", f"{found.entries:,}", _size(found.bytes), f"{found.hits:,}", f"{found.misses:,}",
                  _rate(found.hits, found.misses))  # fmt: skip
    console = out_console()
    console.print(table)
    bound = f"bound {_size(found.max_bytes)} (--score-cache-max-size)"
    on_disk = f"; {_size(found.file_bytes)} on disk" if found.file_bytes is not None else "; not made yet"
    console.print(f"[dim]{bound}{on_disk}[/]")


@app.command(cls=PanelCommand)
def clear(
    score_cache: StoreOption = "default",
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="ID|DIR",
            help="Only this model's entries (as `score-cache stats` names it); default: every entry.",
        ),
    ] = None,
) -> None:
    """Remove the score cache's entries (all, or one model's) and their hit counts."""
    with reported_errors():
        store = _store(score_cache)
        removed = 0 if _missing(store) else _read(store, lambda s: s.clear(model))
    which = f" of {escape(model)}" if model else ""
    err_console.print(f"removed {removed:,} entries{which} from {escape(store.where)}")
