"""Scale-out on Ray Data: the same parsing, batching and scoring as the local engine, one model per actor.

Input files are read by Ray Data (local paths, directories, globs or object-store URIs), split into
lines with their line numbers, scored by a pool of actors that each load the model once from the same
frozen :class:`LoaderConfig`, and written by Ray Data, one JSONL file per block, into the output
directory. Every output record carries ``line`` (and ``file``) so the output can be re-sorted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .config import LoaderConfig, ScoreOptions
from .errors import BgeRerankError, InputError, UsageError, option
from .inputs import Rejected, parse_line, read_lines, split_lines
from .jobs import Task
from .outputs import merge

if TYPE_CHECKING:
    from .score_cache import StoreSpec

INSTALL_HINT = "pip install 'bge-rerank-cli[ray]'"


@dataclass(frozen=True)
class RayJob:
    """Everything an actor needs, picklable: the task (score or rerank), the model, bad-line policy."""

    task: Task[Any, Any]
    config: LoaderConfig
    on_error: str = "fail"
    score_cache: StoreSpec | None = None  # each actor opens it: a redis:// URL is shared across nodes


@dataclass(frozen=True)
class RayResult:
    written: int
    rejected: int
    actors: int
    gpus_per_actor: float
    seconds: float


def require_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise UsageError(
            f"{option('engine', 'ray')} needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


def file_lines(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One file (as Ray Data reads it) into its numbered lines, split exactly as a local job splits them."""
    return [
        {"file": row["path"], "line": number, "raw": raw}
        for number, raw in read_lines(split_lines(row["bytes"]))
    ]


class ScoreActor:
    """A Ray Data callable class: loads the model once, then runs the job's task on batches of lines."""

    def __init__(self, job: RayJob) -> None:
        from .backends import load_scorer

        self.job = job
        self.scorer = load_scorer(job.config)
        self.cache = None
        if job.score_cache is not None:
            from .jobs.settings import bind_cache

            store = job.score_cache.open()
            self.cache = bind_cache(store, self.scorer, getattr(job.task, "options", ScoreOptions()))

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        from .engine import JobControl

        task = self.job.task
        items, files, rejected = [], [], []
        for file, line, raw in zip(batch["file"], batch["line"], batch["raw"], strict=True):
            parsed = parse_line(int(line), bytes(raw), str(file), task.parse)
            if isinstance(parsed, Rejected):
                rejected.append((str(file), parsed))
            else:
                items.append(parsed)
                files.append(str(file))
        out: dict[str, list[Any]] = {"kind": [], "json": []}
        control = JobControl(cache=self.cache)
        rows = [row for group in task.stream(self.scorer, items, control) for row in group]
        for file, row in zip(files, rows, strict=True):  # one row per item, in input order
            record = merge(task.to_json(row), {"line": task.line_of(row), "file": file})
            out["kind"].append("record")
            out["json"].append(orjson.dumps(record))
        for file, rej in rejected:
            error = {
                "file": file,
                "line": rej.line,
                "reason": rej.reason,
                "raw": rej.raw.decode("utf-8", "replace"),
            }
            # In fail mode a bad line is fatal: the driver reports the first one and writes nothing.
            fatal = self.job.on_error == "fail" and not rej.blank
            out["kind"].append("fatal" if fatal else "error")
            out["json"].append(orjson.dumps(error))
        return out


def _jsonl_sink(path: str) -> Any:
    from ray.data.datasource import BlockBasedFileDatasink

    class JsonLinesSink(BlockBasedFileDatasink):
        """Writes the pre-serialised ``json`` column, one JSON object per line, one file per block."""

        def write_block_to_file(self, block: Any, file: Any) -> None:
            for row in block.iter_rows(public_row_format=False):
                file.write(bytes(row["json"]) + b"\n")

    return JsonLinesSink(path, file_format="jsonl")


def run(
    job: RayJob,
    inputs: str,
    output_dir: str,
    *,
    address: str | None = None,
    actors: int = 1,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float = 1.0,
    progress: bool = False,
) -> RayResult:
    """Run ``job`` over ``inputs`` on Ray and write JSONL files into ``output_dir`` (errors under ``errors/``)."""
    import time

    ray = require_ray()
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.print_on_execution_start = False
    gpus = (
        gpus_per_actor
        if gpus_per_actor is not None
        else (1.0 if ray.cluster_resources().get("GPU", 0) else 0.0)
    )
    started = time.perf_counter()
    # Reading and splitting are light and ask for no CPU, so they are never starved by the actors.
    lines = ray.data.read_binary_files(inputs, include_paths=True, num_cpus=0).flat_map(
        file_lines, num_cpus=0
    )
    scored = lines.map_batches(
        ScoreActor,
        fn_constructor_args=(job,),
        batch_size=max(job.config.batch_size * 8, 256),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus,
        num_cpus=cpus_per_actor,
    )
    try:
        from ray.data.expressions import col

        scored = scored.materialize()
        _raise_first_fatal(scored.filter(expr=col("kind") == "fatal"))
        records = scored.filter(expr=col("kind") == "record")
        errors = scored.filter(expr=col("kind") == "error")
        written, rejected = records.count(), errors.count()
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        if written:
            records.write_datasink(_jsonl_sink(output_dir))
        if rejected:
            errors.write_datasink(_jsonl_sink(str(Path(output_dir) / "errors")))
    except Exception as exc:
        cause = _domain_error(exc)
        if cause is not None:
            raise cause from None
        raise
    return RayResult(written, rejected, actors, gpus, time.perf_counter() - started)


def _raise_first_fatal(fatal: Any) -> None:
    rows = [orjson.loads(bytes(row["json"])) for row in fatal.take_all()]
    if rows:
        first = min(rows, key=lambda r: (r["file"], r["line"]))
        raise InputError(first["reason"], source=first["file"], line=first["line"])


def _domain_error(exc: BaseException) -> BgeRerankError | None:
    """Ray wraps exceptions raised in actors; find ours so the CLI can report it as usual."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BgeRerankError):
            return current
        as_instance = getattr(current, "as_instanceof_cause", None)
        if callable(as_instance):
            try:
                unwrapped = as_instance()
                if isinstance(unwrapped, BgeRerankError):
                    return unwrapped
            except Exception:
                pass
        current = current.__cause__ or current.__context__ or getattr(current, "cause", None)
    return None
