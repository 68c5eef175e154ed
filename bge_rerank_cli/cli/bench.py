"""`bge-rerank bench`: what each precision and backend gives on your model and hardware, measured."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from ..config import LoaderConfig
from ..errors import ExitCode, UsageError
from ..score_cache_common import public_where
from . import options as opt
from .console import err_console, out_console
from .exits import reported_errors
from .views import STAND_IN

if TYPE_CHECKING:
    from ..benchmark import Measurement, Request
    from ..ceilings import Ceiling
    from ..score_cache import StoreSpec


@opt.loader_options(precision=False)
def bench(
    config: LoaderConfig,
    input_path: Annotated[
        str | None,
        typer.Argument(
            metavar="INPUT",
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
    ceilings: Annotated[
        bool,
        typer.Option(
            "--ceilings/--no-ceilings",
            help="Measure this machine's GEMM ceilings with each backend's own kernel (torch linear, "
            "onnxruntime MatMul fp32 and int8) before the setups and again after them (a few seconds each; "
            "the faster counts), and show each setup's speed as a percentage of its ceiling.",
        ),
    ] = True,
    recommend: Annotated[
        bool,
        typer.Option(
            "--recommend",
            help="Also record which exact (fp32) backend, torch or onnx, was faster for this model on this "
            "CPU: --backend auto (the default) uses it from then on. Needs torch-fp32 and onnx-fp32 among "
            "the setups (the default CPU set has them). int8 is reported, never chosen.",
        ),
    ] = False,
    plot: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Also draw pairs/s and latency p50/p95 of each setup as a picture: FILE.png or FILE.svg. "
            "Needs pip install 'bge-rerank-cli[plot]'.",
        ),
    ] = None,
    fmt: opt.ReportFormatOption = opt.ReportFormat.AUTO,
    score_cache: opt.ScoreCacheOption = None,
    score_cache_max_size: opt.ScoreCacheMaxSize = None,
) -> None:
    """Measure pairs/s, latency p50/p95 and peak memory of each precision and backend, side by side.

    Each setup runs in a fresh process on the same requests: one batch job over all pairs (pairs/s, tokens/s) and each request on its own (latency). Scores are compared with the first setup's (max |Δ score|), so the accuracy a faster setup costs is shown next to its speed. int8 and bf16 change scores: check that column on your own data before you switch. The machine's limit is measured in the same run: the CPU's ISA flags, each backend's GEMM rate on a layer-sized problem (before and after the setups, the faster counts), and each setup as % of its ceiling (tokens/s x the model's FLOPs per token / GEMM rate). With --score-cache, each setup then runs the batch job through the cache, first (storing what it does not know) and again (every pair known): the JSON's score_cache, and the table's cached p/s and known columns.
    """
    from ..benchmark import (
        default_setups,
        demo_requests,
        machine,
        measure_ceilings,
        run_setups,
        setup_config,
        with_ceilings,
    )
    from ..ceilings import best_of, isa_flags, read_shape

    with reported_errors():
        if plot is not None:
            from ..plots import plot_format

            plot_format(plot)  # a wrong suffix or no matplotlib fails now, not after the measuring
        as_json = opt.wants_json(fmt)
        from ..backends.torch_scorer import resolve_device

        where = resolve_device(config.device)
        chosen = [s.strip() for s in setups.split(",") if s.strip()] if setups else default_setups(where)
        for setup in chosen:
            setup_config(config, setup)  # unknown names fail before any model loads
        cache = _cache_spec(score_cache, score_cache_max_size)
        requests = _requests(input_path) if input_path else demo_requests()
        random_weights = _random_weights(config)
        if random_weights:  # said before the measuring and even with -f json (on stderr): the speed is real
            err_console.print(
                STAND_IN.replace(
                    "its scores and orders are meaningless", "its speed is real, its scores are not"
                ).format(model=escape(config.model))
            )
        requests = requests[:limit] if limit else requests
        if not requests:
            raise UsageError("no requests to measure: the input has no lines with documents.")
        with _status("measuring GEMM ceilings …"):
            before = measure_ceilings(config, chosen, where, timeout=timeout) if ceilings else []
        with _status(f"measuring {', '.join(chosen)} …"):
            results = run_setups(config, chosen, requests, timeout=timeout, cache=cache)
        with _status("measuring GEMM ceilings again …"):  # a neighbour's load may have slowed the first
            after = measure_ceilings(config, chosen, where, timeout=timeout) if ceilings else []
        measured = best_of(before, after)
        shape = read_shape(config.model, config.revision, config.cache_dir)
        results = with_ceilings(results, shape, measured)
        header = {
            "model": config.model,
            "revision": config.revision,
            "random_weights": random_weights,
            "device": where,
            "machine": machine(),
            "isa": isa_flags(),
            "requests": len(requests),
            "shape": asdict(shape) if shape else None,
            "ceilings": [c.to_dict() for c in measured],
            "ceilings_before": [c.to_dict() for c in before],
            "ceilings_after": [c.to_dict() for c in after],
        }
        if cache is not None:
            header["score_cache"] = next(
                (r.score_cache.where for r in results if r.score_cache), public_where(cache.spec)
            )
        if recommend:
            header["recommendation"] = _recommend(config, results)
        if plot is not None:
            _draw(header, results, plot)
        if as_json:
            rows = [{**_ran_as(config, r.setup), **_row(r)} for r in results]
            sys.stdout.buffer.write(
                orjson.dumps(
                    {**header, "results": rows}, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
                )
            )
        else:
            out_console(width=None if sys.stdout.isatty() else 132).print(_table(header, results, measured))
        if any(r.error is not None for r in results):
            raise typer.Exit(ExitCode.CHECKS_FAILED)


def _cache_spec(spec: str | None, max_size: str | None) -> StoreSpec | None:
    """The score cache --score-cache names, checked here (a bad size or URL fails before any measuring);
    each setup's process opens it."""
    from ..score_cache import StoreSpec

    store = opt.open_score_cache(spec, max_size)
    if store is None:
        return None
    store.close()
    return StoreSpec.of(store)


def _row(result: Measurement) -> dict[str, Any]:
    """A result for the JSON report: without its scores, and without ``score_cache`` when none was used."""
    row = asdict(result)
    del row["scores"]
    if result.score_cache is None:
        del row["score_cache"]
    return row


def _recommend(config: LoaderConfig, results: list[Measurement]) -> dict[str, Any]:
    """Record the faster exact backend for ``--backend auto`` and say so on stderr."""
    from ..recommend import choose, save

    chosen = choose(results)
    if chosen is None or not {"torch-fp32", "onnx-fp32"} <= set(chosen.pairs_per_s):
        raise UsageError(
            "--recommend needs both torch-fp32 and onnx-fp32 to have run (onnx needs "
            "pip install 'bge-rerank-cli[onnx]'); nothing was recorded."
        )
    stored = save(config, chosen)
    err_console.print(escape(stored.summary()), highlight=False)
    return asdict(stored)


def _ran_as(config: LoaderConfig, setup: str) -> dict[str, str]:
    """The loader settings a setup ran with, for the JSON report (fp32 ONNX: ``dtype`` is fp32)."""
    from ..benchmark import setup_config

    ran = setup_config(config, setup)
    return {
        "backend": ran.backend,
        "dtype": "fp32" if ran.dtype == "auto" else ran.dtype,
        "quantize": ran.quantize,
    }


def _random_weights(config: LoaderConfig) -> bool:
    """Whether the model is a random-weight stand-in (``tools/random_model.py`` marks its config.json):
    its speed is real, its scores are not."""
    from ..hub import model_folder

    folder = model_folder(config.model, config.revision, config.cache_dir)
    try:
        found = orjson.loads((folder / "config.json").read_bytes()) if folder else {}
    except (OSError, orjson.JSONDecodeError):
        return False
    return isinstance(found, dict) and bool(found.get("bge_rerank_random_weights"))


def _draw(header: dict[str, Any], results: list[Measurement], path: str) -> None:
    from ..plots import draw_bench

    written = draw_bench(results, path, model=header["model"], device=header["device"],
                         requests=header["requests"], random_weights=header["random_weights"])  # fmt: skip
    err_console.print(f"plot written to {escape(str(written))}", highlight=False)


def _status(text: str) -> contextlib.AbstractContextManager[object]:
    """A spinner on stderr while ``text`` runs, on a terminal only."""
    return err_console.status(text, spinner="dots") if err_console.is_terminal else contextlib.nullcontext()


def _requests(path: str) -> list[Request]:
    from ..benchmark import Request
    from ..jobs import JsonlSource, RerankTask, read_all

    items = read_all(JsonlSource(path), RerankTask())
    return [Request(item.query, tuple(d.text for d in item.documents)) for item in items]


def _table(header: dict[str, Any], results: list[Measurement], ceilings: Sequence[Ceiling] = ()) -> Table:
    """The setups side by side; the GPU column only where a GPU was measured, so 80 columns hold it."""
    from ..ceilings import isa_line

    pairs = next((r.pairs for r in results if r.error is None), 0)
    gpu = any(r.peak_gpu_mb is not None for r in results)
    notes = [f"{escape(header['machine'])}", isa_line(header["isa"])]
    notes += [f"ceiling: {escape(c.describe())}" for c in ceilings]
    per_token = next((r.flops_per_token for r in results if r.flops_per_token), None)
    if ceilings and per_token:
        notes.append(
            f"%ceil: tok/s x {per_token / 1e9:.2f} GFLOP per token (at these lengths) / the matching ceiling"
        )
    elif ceilings:
        notes.append("%ceil: not computed, the model's shape (config.json) is unknown here")
    notes.append("max|Δ|: largest score (sigmoid) difference from the first setup on the same pairs")
    cache = next((r.score_cache for r in results if r.score_cache is not None), None)
    if cache is not None:
        notes.append(
            f"cached p/s: the batch job again, every pair known to the score cache {escape(cache.where)}"
        )
    table = Table(
        title=f"bge-rerank bench: {escape(header['model'])} on {header['device']}, "
        f"{header['requests']} requests, {pairs} pairs\n" + "\n".join(notes),
        title_justify="left",
        box=box.SIMPLE_HEAD,  # no frame, a blank between columns (two; one with the GPU's): 80 columns hold it
        show_edge=False,
        pad_edge=False,
        padding=(0, 0 if gpu else 1, 0, 0),
    )
    names = ["setup", "ran as", "pairs/s", "tok/s", "p50 ms", "p95 ms", "RSS MB"]
    names += ["GPU MB"] if gpu else []
    names += ["%ceil"] if ceilings else []
    names += ["max|Δ|"]
    names += ["cached p/s", "known"] if cache is not None else []
    for name in names:
        table.add_column(name, justify="left" if name in ("setup", "ran as") else "right", no_wrap=True)
    for r in results:
        if r.error is not None:  # the reason goes below the table: a long one in a cell would squash it
            table.add_row(r.setup, "[red]failed[/]", *[""] * (len(names) - 2))
            continue
        cells = [
            r.setup,
            r.device,
            f"{r.pairs_per_s:.2f}",
            f"{r.tokens_per_s:.0f}",
            f"{r.latency_p50_ms:.0f}",
            f"{r.latency_p95_ms:.0f}",
            f"{r.peak_rss_mb:.0f}",
        ]
        cells += ["-" if r.peak_gpu_mb is None else f"{r.peak_gpu_mb:.0f}"] if gpu else []
        cells += ["-" if r.pct_of_ceiling is None else f"{r.pct_of_ceiling:.0f}%"] if ceilings else []
        cells += ["-" if r.max_abs_delta is None else f"{r.max_abs_delta:.1e}"]
        cells += _cache_cells(r) if cache is not None else []
        table.add_row(*cells)
    failures = [
        f"[red]{escape(r.setup)} failed:[/] {escape(r.error)}" for r in results if r.error is not None
    ]
    failures += [
        f"[yellow]{escape(r.setup)}: the score cache failed, uncached:[/] {escape(r.score_cache.error)}"
        for r in results
        if r.score_cache is not None and r.score_cache.error is not None
    ]
    if failures:
        table.caption = "\n".join(failures)
        table.caption_justify = "left"
    return table


def _cache_cells(result: Measurement) -> list[str]:
    runs = result.score_cache
    if runs is None or runs.error is not None:
        return ["-", "-"]
    again = runs.again
    return [f"{again.pairs_per_s:.2f}", f"{again.hits}/{again.hits + again.misses}"]
