"""`bge-rerank download`: fetch a model (and export it to ONNX) ahead of time."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..config import DEFAULT_MODEL, Backend, LoaderConfig, Quantize, Template
from . import options as opt
from .console import err_console, out_console, say
from .exits import reported_errors

if TYPE_CHECKING:
    from ..download import Downloaded


def download(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            envvar="BGE_RERANK_MODEL",
            help="Hugging Face model id, or a local model directory (nothing to fetch; exported with "
            "--backend onnx).",
        ),
    ] = DEFAULT_MODEL,
    revision: opt.Revision = None,
    cache_dir: opt.CacheDir = None,
    offline: opt.Offline = False,
    trust_remote_code: opt.TrustRemoteCode = False,
    template: opt.TemplateOption = Template.AUTO,
    backend: opt.BackendOption = Backend.AUTO,
    quantize: opt.QuantizeOption = Quantize.NONE,
    force: Annotated[
        bool, typer.Option("--force", help="Fetch the files again and redo the ONNX export.")
    ] = False,
    quiet: opt.Quiet = False,
    fmt: opt.ReportFormatOption = opt.ReportFormat.AUTO,
) -> None:
    """Fetch a model ahead of time, and its ONNX export: for a container build or an air-gapped host.

    The files go into the Hugging Face cache and, with --backend onnx, the export is made now, so that no request waits for either. Only the files a reranker loads are fetched: other frameworks' weights, ready-made ONNX/OpenVINO exports and pickled duplicates of safetensors are skipped. The export goes where --backend onnx looks when loading, so a later run with the same --backend, --quantize, --revision and --template (and --offline) uses it without torch. Offline (--offline, HF_HUB_OFFLINE=1) or with the Hub unreachable, the cache is checked and exported from. Checks free memory before an export. A second run fetches and exports nothing. Prints what it did: a summary on a terminal, JSON when piped.

    \b
    Examples:
      bge-rerank download
      bge-rerank download --backend onnx --quantize int8
      bge-rerank download ./my-reranker --backend onnx -f json
    """
    from ..download import download as fetch

    with reported_errors():
        config = opt.build_config(
            model=model,
            revision=revision,
            cache_dir=cache_dir,
            offline=offline,
            trust_remote_code=trust_remote_code,
            template=template,
            backend=backend,
            quantize=quantize,
        )
        as_json = opt.wants_json(fmt)
        with _progress_bars(not quiet and err_console.is_terminal):
            done = fetch(config, force=force, report=None if quiet else _step)
        if as_json:
            sys.stdout.buffer.write(
                orjson.dumps(done.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
            )
            if not quiet:
                say(f"[dim]{escape(_summary(done))}[/]")
        else:
            _render(done, config)


@contextmanager
def _progress_bars(shown: bool) -> Iterator[None]:
    """huggingface_hub's download bars on stderr: on a terminal only, as the other commands' progress."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    hide = not shown and not are_progress_bars_disabled()
    if hide:
        disable_progress_bars()
    try:
        yield
    finally:
        if hide:
            enable_progress_bars()


def _step(line: str) -> None:
    say(escape(line))


def _summary(done: Downloaded) -> str:
    from ..memory import human_bytes as human

    parts = []
    if done.snapshot is not None:
        parts.append(f"snapshot {done.snapshot} ({human(done.snapshot_bytes)})")
    if done.export is not None:
        parts.append(f"ONNX export {done.export} ({human(done.export_bytes or 0)})")
    return f"done in {done.seconds:.1f} s: " + "; ".join(parts)


def _render(done: Downloaded, config: LoaderConfig) -> None:
    """The summary as a grid on stdout: each value wraps under its own column, never mid-word."""
    from ..memory import human_bytes as human

    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(overflow="fold")
    if done.commit:
        grid.add_row("commit", f"{done.commit} ({done.revision or 'main'})")
    if done.snapshot is not None:
        grid.add_row("snapshot", f"{done.snapshot} ({human(done.snapshot_bytes)})")
    else:
        grid.add_row("snapshot", "not cached (the export is all --backend onnx loads)")
    if done.source == "local":
        fetched = "nothing: a local directory"
    elif done.snapshot is None:
        fetched = "nothing (the Hub was not asked)"
    elif done.fetched_files:
        fetched = f"{done.fetched_files} files, {human(done.fetched_bytes)} from {done.endpoint}"
    else:
        fetched = "nothing: already in the cache" + (
            " (the Hub was not asked)" if done.source == "cache" else ""
        )
    grid.add_row("fetched", fetched)
    if done.skipped:
        grid.add_row(
            "skipped", f"{len(done.skipped)} files, {human(done.skipped_bytes)}: {', '.join(done.skipped)}"
        )
    if done.export is not None:
        made = f"made in {done.steps.get('export', 0.0):.1f} s" if done.exported else "already there"
        grid.add_row("export", f"{done.export} ({human(done.export_bytes or 0)}), {made}")
    grid.add_row("use with", shlex.join(_flags(done, config)))
    grid.add_row("time", f"{done.seconds:.1f} s")
    console = out_console(soft_wrap=False)
    ready = f"--backend {done.backend}" + (f" --quantize {done.quantize}" if done.quantize != "none" else "")
    console.print(Text.from_markup(f"[bold]{escape(done.model)}[/]: ready for {ready}"))
    console.print(grid)


def _flags(done: Downloaded, config: LoaderConfig) -> list[str]:
    """The loader flags that find what was downloaded, with no network."""
    flags = [] if config.model == DEFAULT_MODEL else ["-m", config.model]
    if config.revision:
        flags += ["--revision", config.revision]
    if config.cache_dir:
        flags += ["--cache-dir", config.cache_dir]
    flags += ["--backend", done.backend]
    if done.quantize != "none":
        flags += ["--quantize", done.quantize]
    if config.template != "auto":
        flags += ["--template", config.template]
    if config.trust_remote_code:
        flags.append("--trust-remote-code")
    return [*flags, "--offline"]
