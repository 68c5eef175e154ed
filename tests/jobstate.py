"""The state a stopped job leaves, for resume tests: its output cut back to the first records, and the
checkpoint the runner saves at that point, holding the job's settings exactly as the runner records them
(resolved from the loaded tiny model, through the same function)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bge_rerank_cli.backends import load_scorer
from bge_rerank_cli.config import LoaderConfig
from bge_rerank_cli.jobs import Checkpoint, Output, Source, Task
from bge_rerank_cli.jobs.resume import loaded_settings


def stop_after(
    out: Path,
    source: Source,
    task: Task[Any, Any],
    config: LoaderConfig,
    *,
    records: int = 1,
    errors: str | None = None,
) -> Checkpoint:
    """Leave ``out`` (a complete run's output, one record per input line) as the same job stopped after
    ``records`` records: the output cut to them and a checkpoint saying so. Returns the checkpoint."""
    kept = b"".join(out.read_bytes().splitlines(keepends=True)[:records])
    out.write_bytes(kept)
    scorer = load_scorer(config)
    settings = loaded_settings(source, task, Output(str(out), "jsonl", errors), scorer, config)
    checkpoint = Checkpoint(
        source.name,
        settings,
        scorer.model_limit,
        last_line=records,
        last_record_line=records,
        output_bytes=len(kept),
        written=records,
    )
    checkpoint.save(str(out))
    return checkpoint


def snapshot(*paths: Path) -> dict[str, bytes | None]:
    """Each file's bytes (``None`` when it does not exist), to prove a refusal changed nothing."""
    return {str(p): p.read_bytes() if p.exists() else None for p in paths}
