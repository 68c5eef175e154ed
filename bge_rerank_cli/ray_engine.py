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
from typing import Any, Literal

import orjson

from .config import LoaderConfig, ScoreOptions
from .errors import BgeRerankError, InputError, UsageError
from .inputs import BOM, Rejected, parse_object, parse_rerank_item, parse_score_item

INSTALL_HINT = "pip install 'bge-rerank-cli[ray]'"
Kind = Literal["score", "rerank"]


@dataclass(frozen=True)
class RayJob:
    """Everything an actor needs, picklable: what to run and with which model."""

    kind: Kind
    config: LoaderConfig
    options: ScoreOptions
    on_error: Literal["fail", "skip"] = "fail"
    top_k: int | None = None
    min_score: float | None = None


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
        raise UsageError(f"--engine ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def split_lines(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One file (as Ray Data reads it) into its lines, numbered from 1, without line ends or BOM."""
    data: bytes = row["bytes"]
    if data.startswith(BOM):
        data = data[len(BOM) :]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [
        {"file": row["path"], "line": i, "raw": raw.rstrip(b"\r")} for i, raw in enumerate(lines, start=1)
    ]


class ScoreActor:
    """A Ray Data callable class: loads the model once, then scores batches of input lines."""

    def __init__(self, job: RayJob) -> None:
        from .loader import load_scorer

        self.job = job
        self.scorer = load_scorer(job.config)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        parse = parse_score_item if self.job.kind == "score" else parse_rerank_item
        items, rejected = [], []
        for file, line, raw in zip(batch["file"], batch["line"], batch["raw"], strict=True):
            raw_bytes = bytes(raw)
            if not raw_bytes.strip():
                rejected.append((str(file), Rejected(int(line), "blank line", raw_bytes, blank=True)))
                continue
            try:
                item = parse(parse_object(raw_bytes, int(line), str(file)), int(line), str(file))
            except InputError as exc:
                rejected.append((str(file), Rejected(int(line), exc.reason, raw_bytes)))
                continue
            items.append((str(file), item))
        out: dict[str, list[Any]] = {"kind": [], "json": []}
        for file, record in self._score(items):
            out["kind"].append("record")
            out["json"].append(orjson.dumps({**record, "file": file}))
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

    def _score(self, items: list[tuple[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        from .engine import rerank_stream, score_pairs
        from .outputs import rerank_record, score_record

        files = [file for file, _ in items]
        if self.job.kind == "score":
            scored = score_pairs(self.scorer, [item.pair for _, item in items], options=self.job.options)
            records = [
                _with_line(score_record(item, s), item.line)
                for (_, item), s in zip(items, scored, strict=True)
            ]
        else:
            results = [
                r
                for chunk in rerank_stream(
                    self.scorer,
                    [item for _, item in items],
                    top_k=self.job.top_k,
                    min_score=self.job.min_score,
                    options=self.job.options,
                )
                for r in chunk
            ]
            records = [_with_line(rerank_record(r), r.line) for r in results]
        return list(zip(files, records, strict=True))


def _with_line(record: dict[str, Any], line: int) -> dict[str, Any]:
    if "line" in record:
        record["input_line"] = record.pop("line")
    if "file" in record:
        record["input_file"] = record.pop("file")
    record["line"] = line
    return record


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
        split_lines, num_cpus=0
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
