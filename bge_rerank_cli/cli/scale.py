"""`--engine ray` for score and rerank: the same task on Ray Data, written as JSONL files into -o DIR."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..config import LoaderConfig
from ..errors import UsageError
from ..jobs import Task
from .batch import OutputFlags, RayOptions
from .console import err_console, say

if TYPE_CHECKING:
    from ..score_cache import StoreSpec


def run_ray(
    task: Task[Any, Any],
    config: LoaderConfig,
    flags: OutputFlags,
    ray: RayOptions,
    input: str | None,
    cache: StoreSpec | None = None,
) -> None:
    from ..ray_engine import RayJob, run

    if input is None or input == "-":
        raise UsageError("--engine ray reads files: give an input path, directory, glob or URI (not stdin).")
    if flags.output is None:
        raise UsageError("--engine ray writes a directory of JSONL files: give -o DIR.")
    if flags.resume:
        raise UsageError("--resume is for the local engine; rerun a Ray job into a fresh -o DIR.")
    if flags.fmt not in ("auto", "jsonl"):
        raise UsageError("--engine ray writes JSONL only.")
    result = run(
        RayJob(task, config, flags.on_error, cache),
        input,
        flags.output,
        address=ray.address,
        actors=ray.actors,
        gpus_per_actor=ray.gpus_per_actor,
        cpus_per_actor=ray.cpus_per_actor,
        progress=not flags.quiet and err_console.is_terminal,
    )
    if not flags.quiet:
        skipped = f", {result.rejected} rejected lines in {flags.output}/errors" if result.rejected else ""
        say(
            f"[dim]ray: wrote {result.written} {task.unit} to {flags.output}{skipped} in {result.seconds:.1f}s "
            f"with {result.actors} actor(s), {result.gpus_per_actor:g} GPU each[/]"
        )
