"""`bge-rerank doctor`: find and explain what breaks installs."""

from __future__ import annotations

import re
import sys
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..config import LoaderConfig
from ..errors import ExitCode, render
from . import options as opt
from .console import err_console, out_console
from .exits import flag_name, reported_errors

if TYPE_CHECKING:
    from ..doctor import CheckResult

ICONS = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}
COMMAND = re.compile(r"`([^`]+)`")  # a command quoted in a fix


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

    Every check reports ok, warn or FAIL with its finding and the fix. Exit code 0 when nothing failed, 5 otherwise. Takes the same model flags as the other commands, so it checks the model you would use.
    """
    from ..doctor import collect, run_checks

    with reported_errors():
        as_json = opt.wants_json(fmt)
        if err_console.is_terminal:
            with err_console.status("checking …", spinner="dots"):
                results = run_checks(collect(config, check_model=check_model, timeout=timeout))
        else:
            results = run_checks(collect(config, check_model=check_model, timeout=timeout))
        results = [_in_flags(r) for r in results]
        failed = any(r.status == "fail" for r in results)
        if as_json:
            payload = {"ok": not failed, "model": config.model, "checks": [asdict(r) for r in results]}
            sys.stdout.buffer.write(
                orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
            )
        else:
            _render(results, out_console(soft_wrap=True))
        if failed:
            raise typer.Exit(ExitCode.CHECKS_FAILED)


def _in_flags(result: CheckResult) -> CheckResult:
    """Settings the library names in a finding or fix, spelled as this command's flags."""
    return replace(result, finding=render(result.finding, flag_name), fix=render(result.fix, flag_name))


def _render(results: list[CheckResult], console: Console) -> None:
    """One block per check: the status, then the name and finding, and the fix below, wrapped between
    words under their own column (never mid-word). A command the fix quotes (`...`) follows on a line of
    its own, never wrapped by us, so it is copied whole."""
    console.print("[bold]bge-rerank doctor[/]")
    for r in results:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")
        grid.add_row(
            Text.from_markup(ICONS[r.status]), Text.from_markup(f"[bold]{r.name}[/]: {escape(r.finding)}")
        )
        if r.fix:
            grid.add_row("", Text.from_markup(f"[cyan]fix:[/] {escape(r.fix)}"))
        console.print(grid, soft_wrap=False)
        for command in COMMAND.findall(r.fix):
            console.print(f"       [dim]$[/] {escape(command)}", soft_wrap=True)
