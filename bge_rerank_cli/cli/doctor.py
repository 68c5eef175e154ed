"""`bge-rerank doctor`: find and explain what breaks installs."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Annotated

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from ..config import LoaderConfig
from ..errors import ExitCode
from . import options as opt
from .console import err_console, out_console
from .exits import reported_errors

ICONS = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}


@opt.loader_options()
def doctor(
    config: LoaderConfig,
    check_model: Annotated[
        bool,
        typer.Option("--check-model", help="Also load the model and score one pair (load time, latency)."),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the Hub before calling it unreachable.")
    ] = 3.0,
    fmt: opt.ReportFormatOption = opt.ReportFormat.AUTO,
) -> None:
    """Diagnose the install: versions, TensorFlow/Keras conflicts, model cache, Hub access, CUDA, CPU.

    Every check reports ok, warn or FAIL with its finding and the fix. Exit code 0 when nothing failed, 1 otherwise. Takes the same model flags as the other commands, so it checks the model you would use.
    """
    from ..doctor import collect, run_checks

    with reported_errors():
        as_json = opt.wants_json(fmt)
        if err_console.is_terminal:
            with err_console.status("checking …", spinner="dots"):
                results = run_checks(collect(config, check_model=check_model, timeout=timeout))
        else:
            results = run_checks(collect(config, check_model=check_model, timeout=timeout))
        failed = any(r.status == "fail" for r in results)
        if as_json:
            payload = {"ok": not failed, "model": config.model, "checks": [asdict(r) for r in results]}
            sys.stdout.buffer.write(
                orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
            )
        else:
            table = Table(title="bge-rerank doctor", title_justify="left", show_lines=True)
            table.add_column("status", no_wrap=True)
            table.add_column("check", no_wrap=True, style="bold")
            table.add_column("finding", ratio=3)
            table.add_column("fix", ratio=2)
            for r in results:
                table.add_row(ICONS[r.status], r.name, escape(r.finding), escape(r.fix))
            out_console().print(table)
        if failed:
            raise typer.Exit(ExitCode.CHECKS_FAILED)
