"""The `bge-rerank` command line. Thin commands over the library; heavy imports happen lazily."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from .. import __version__
from .bench import bench
from .demo import demo
from .doctor import doctor
from .download import download
from .eval import eval_
from .exits import Group
from .helpformat import PanelCommand
from .rerank import rerank
from .score import score
from .score_cache import app as score_cache_app
from .serve import serve

_UNBROKEN = re.compile(r"(pip install '[^']*'|\s+)")


def _wrap_help_at_spaces_only() -> None:
    """Help wraps at spaces, never inside a hyphenated word, so what it quotes can be copied whole
    (`pip install 'bge-rerank-cli[serve]'`, `--max-length`). Typer's vendored Click breaks on hyphens."""
    try:
        from typer._click import _textwrap
    except ImportError:  # a Typer without the vendored wrapper: nothing to adjust
        return

    class Wrapper(_textwrap.TextWrapper):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["break_on_hyphens"] = False
            super().__init__(*args, **kwargs)

        def _split(self, text: str) -> list[str]:
            # An install hint stays on one line: `pip install 'bge-rerank-cli[onnx]'` is one chunk.
            return [chunk for chunk in _UNBROKEN.split(text) if chunk]

    _textwrap.TextWrapper = Wrapper  # type: ignore[misc]


_wrap_help_at_spaces_only()

app = typer.Typer(
    name="bge-rerank",
    help="Rerank retrieval candidates with a cross-encoder (default BAAI/bge-reranker-v2-m3).\n\n"
    "Reads JSONL from a file or stdin; writes JSONL when piped and a table on a terminal.",
    cls=Group,
    no_args_is_help=True,
    add_completion=True,  # --install-completion and --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: `[onnx]` in an install hint is text, not markup
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bge-rerank {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Rerank retrieval candidates with a cross-encoder (default BAAI/bge-reranker-v2-m3)."""


app.command(cls=PanelCommand)(score)
app.command(cls=PanelCommand)(rerank)
app.command(cls=PanelCommand)(demo)
app.command(cls=PanelCommand)(doctor)
app.command(name="eval", cls=PanelCommand)(eval_)
app.command(cls=PanelCommand)(bench)
app.command(cls=PanelCommand)(serve)
app.command(cls=PanelCommand)(download)
app.add_typer(score_cache_app, name="score-cache")


def main() -> None:
    app(prog_name="bge-rerank")  # the same name (usage lines, completion) under `python -m bge_rerank_cli`
