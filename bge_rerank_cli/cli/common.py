"""What every command shares: the stderr console, error mapping, config building, progress, output."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ..config import LoaderConfig
from ..errors import BgeRerankError, ExitCode, UsageError
from ..outputs import FORMATS

T = TypeVar("T")

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def debug_enabled() -> bool:
    return os.environ.get("BGE_RERANK_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def say(message: str) -> None:
    """A message for people, on stderr."""
    err_console.print(message)


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        level = "warning" if record.levelno >= logging.WARNING else "note"
        err_console.print(f"[yellow]{level}:[/] {escape(record.getMessage())}")


def setup_logging() -> None:
    logger = logging.getLogger("bge_rerank_cli")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.DEBUG if debug_enabled() else logging.INFO)
    logger.propagate = False


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn domain errors into one stderr line and an exit code; tracebacks only with BGE_RERANK_DEBUG=1."""
    setup_logging()
    try:
        yield
    except BgeRerankError as exc:
        if debug_enabled():
            raise
        err_console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as `yes | head` does.
        _silence_stdout()
        raise typer.Exit(141) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if debug_enabled():
            raise
        err_console.print(
            f"[red]error:[/] unexpected {type(exc).__name__}: {escape(str(exc))} "
            "(this is a bug in bge-rerank; rerun with BGE_RERANK_DEBUG=1 for the traceback and report it)"
        )
        raise typer.Exit(int(ExitCode.FAILURE)) from None


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def build_config(
    *,
    model: str,
    device: str,
    fp16: bool | None = None,
    dtype: str = "auto",
    max_length: int,
    batch_size: int,
    batch_tokens: int | None = None,
    offline: bool,
    cache_dir: str | None,
    revision: str | None,
    trust_remote_code: bool,
    backend: str = "torch",
    quantize: str = "none",
) -> LoaderConfig:
    if fp16 is not None:
        wanted = "fp16" if fp16 else "fp32"
        if dtype not in ("auto", wanted):
            raise UsageError(
                f"--{'no-' if not fp16 else ''}fp16 contradicts --dtype {dtype}; give one of them."
            )
        dtype = wanted
    return LoaderConfig(
        model=model,
        device=device,
        dtype=dtype,  # type: ignore[arg-type]  # validated by LoaderConfig
        max_length=max_length,
        batch_size=batch_size,
        batch_tokens=batch_tokens,
        offline=offline,
        cache_dir=cache_dir,
        revision=revision,
        trust_remote_code=trust_remote_code,
        backend=backend,
        quantize=quantize,
    )


def load_model(config: LoaderConfig, quiet: bool) -> Any:
    """Load the scorer (the only place commands touch the loader), with a status line on a terminal."""
    from ..loader import load_scorer

    if quiet or not err_console.is_terminal:
        return load_scorer(config)
    with err_console.status(f"loading {escape(config.model)} …", spinner="dots"):
        return load_scorer(config)


@contextmanager
def progress(quiet: bool, unit: str = "pairs") -> Iterator[Callable[[int], None] | None]:
    """A Rich progress line on stderr (terminal only): pairs scored and rate. Yields an advance callback."""
    if quiet or not err_console.is_terminal:
        yield None
        return
    from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn(f"scoring {unit}"),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[rate]}"),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("score", total=None, rate="")
        started = time.perf_counter()
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            rate = done / max(time.perf_counter() - started, 1e-9)
            bar.update(task, advance=n, rate=f"{rate:,.1f} {unit}/s")

        yield advance


def report_as_json(fmt: str) -> bool:
    """For a report command's --format (auto, table, json): True when it should print JSON."""
    if fmt not in ("auto", "table", "json"):
        raise UsageError(f"--format must be auto, table or json, got {fmt!r}.")
    return fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}.")


_PRECISION_OPTIONS = ("fp16", "dtype", "backend", "quantize")


def _loader_parameters() -> list[tuple[str, Any, Any]]:
    from ..config import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH, DEFAULT_MODEL
    from . import options as opt

    return [
        ("model", opt.Model, DEFAULT_MODEL),
        ("device", opt.Device, "auto"),
        ("fp16", opt.Fp16, None),
        ("dtype", opt.Dtype, "auto"),
        ("max_length", opt.MaxLength, DEFAULT_MAX_LENGTH),
        ("batch_size", opt.BatchSize, DEFAULT_BATCH_SIZE),
        ("batch_tokens", opt.BatchTokens, None),
        ("offline", opt.Offline, False),
        ("cache_dir", opt.CacheDir, None),
        ("revision", opt.Revision, None),
        ("trust_remote_code", opt.TrustRemoteCode, False),
        ("backend", opt.Backend, "torch"),
        ("quantize", opt.Quantize, "none"),
    ]


def loader_options(*, precision: bool = True) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Give a command the shared model, device and batching options, declared once.

    The command takes ``config: LoaderConfig`` instead; the options appear in its ``--help`` (panel
    "Model") and are validated into one config before the command runs. ``precision=False`` leaves out
    --fp16/--dtype/--backend/--quantize, for a command that chooses those itself.
    """
    import functools
    import inspect

    def decorate(command: Callable[..., T]) -> Callable[..., T]:
        shared = [p for p in _loader_parameters() if precision or p[0] not in _PRECISION_OPTIONS]
        names = [name for name, _, _ in shared]
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "config"]
        extra = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
            for n, a, d in shared
        ]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> T:
            values = {name: kwargs.pop(name) for name in names}
            with reported_errors():
                config = build_config(**values)
            return command(config=config, **kwargs)

        params = own + extra
        wrapper.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate
