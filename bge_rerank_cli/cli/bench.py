"""`bge-rerank bench`: what each precision and backend gives on your model and hardware, measured."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from ..config import LoaderConfig
from ..errors import ExitCode, UsageError
from . import options as opt
from .console import err_console, out_console
from .exits import reported_errors

if TYPE_CHECKING:
    from ..benchmark import Measurement, Request


@opt.loader_options(precision=False)
def bench(
    config: LoaderConfig,
    input_path: Annotated[
        str | None,
        typer.Argument(
            metavar="[INPUT]",
            help="Rerank JSONL (query + documents per line) to measure on, one request a line. "
            "Default: the demo's queries and candidates.",
            show_default=False,
        ),
    ] = None,
    setups: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated setups among torch-fp32, torch-fp16, torch-bf16, onnx-fp32, onnx-int8. "
            "The first is the accuracy reference. Default: fp32/fp16/bf16 on CUDA; on the CPU fp32, bf16 "
            "where the CPU has it in hardware, and the ONNX setups when onnxruntime is installed.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Use only the first N requests.")] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds each setup may take before it is reported as timed out.")
    ] = 1800.0,
    fmt: opt.ReportFormatOption = opt.ReportFormat.AUTO,
) -> None:
    """Measure pairs/s, latency p50/p95 and peak memory of each precision and backend, side by side.

    Each setup runs in a fresh process on the same requests: one batch job over all pairs (pairs/s, tokens/s) and each request on its own (latency). Scores are compared with the first setup's (max |Δ score|), so the accuracy a faster setup costs is shown next to its speed. int8 and bf16 change scores: check that column on your own data before you switch.
    """
    from ..benchmark import default_setups, demo_requests, machine, run_setups, setup_config

    with reported_errors():
        as_json = opt.wants_json(fmt)
        from ..backends.torch_scorer import resolve_device

        where = resolve_device(config.device)
        chosen = [s.strip() for s in setups.split(",") if s.strip()] if setups else default_setups(where)
        for setup in chosen:
            setup_config(config, setup)  # unknown names fail before any model loads
        requests = _requests(input_path) if input_path else demo_requests()
        requests = requests[:limit] if limit else requests
        if not requests:
            raise UsageError("no requests to measure: the input has no lines with documents.")
        if err_console.is_terminal:
            with err_console.status(f"measuring {', '.join(chosen)} …", spinner="dots"):
                results = run_setups(config, chosen, requests, timeout=timeout)
        else:
            results = run_setups(config, chosen, requests, timeout=timeout)
        header = {"model": config.model, "device": where, "machine": machine(), "requests": len(requests)}
        if as_json:
            rows = [{k: v for k, v in asdict(r).items() if k != "scores"} for r in results]
            sys.stdout.buffer.write(
                orjson.dumps(
                    {**header, "results": rows}, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
                )
            )
        else:
            out_console(width=None if sys.stdout.isatty() else 132).print(_table(header, results))
        if any(r.error is not None for r in results):
            raise typer.Exit(ExitCode.CHECKS_FAILED)


def _requests(path: str) -> list[Request]:
    from ..benchmark import Request
    from ..jobs import JsonlSource, RerankTask, read_all

    items = read_all(JsonlSource(path), RerankTask())
    return [Request(item.query, tuple(d.text for d in item.documents)) for item in items]


def _table(header: dict[str, Any], results: list[Measurement]) -> Table:
    pairs = next((r.pairs for r in results if r.error is None), 0)
    table = Table(
        title=f"bge-rerank bench: {escape(header['model'])} on {header['device']}, "
        f"{header['requests']} requests, {pairs} pairs\n{escape(header['machine'])}\n"
        "max|Δ|: largest score (sigmoid) difference from the first setup on the same pairs",
        title_justify="left",
    )
    for name in ("setup", "ran as", "pairs/s", "tok/s", "p50 ms", "p95 ms", "RSS MB", "GPU MB", "max|Δ|"):
        table.add_column(name, justify="left" if name in ("setup", "ran as") else "right", no_wrap=True)
    for r in results:
        if r.error is not None:
            table.add_row(r.setup, f"[red]failed: {escape(r.error)}[/]", *[""] * 7)
            continue
        table.add_row(
            r.setup,
            r.device,
            f"{r.pairs_per_s:.2f}",
            f"{r.tokens_per_s:.0f}",
            f"{r.latency_p50_ms:.0f}",
            f"{r.latency_p95_ms:.0f}",
            f"{r.peak_rss_mb:.0f}",
            "-" if r.peak_gpu_mb is None else f"{r.peak_gpu_mb:.0f}",
            "-" if r.max_abs_delta is None else f"{r.max_abs_delta:.1e}",
        )
    return table
