"""Whether and where a job resumes: every check comes before anything is written.

A resume asked for with neither the output nor its checkpoint present starts the job from the
beginning (make-style: ``--resume`` in a retry loop works from the first run). Otherwise, in order:
the checkpoint must be there, readable and of this version; the input must be the checkpoint's; the
settings known without the model must be the checkpoint's (:func:`checkpoint_to_resume`); the files must
be at least as long as the checkpoint says (:func:`resume_point`); the source must prove, while its done
part is skipped, that it is the same input; and once the model is loaded, every setting must be the
checkpoint's (:func:`check_loaded`). A refusal is a :class:`ResumeError` that leaves the output, the
errors file and the checkpoint byte for byte as they were; only then does the runner cut the files back
to the checkpoint and append.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import LoaderConfig
from ..errors import ResumeError
from .checkpoint import RESUME, Checkpoint, ResumePoint, last_jsonl_record, start_over
from .settings import Settings, after_load, before_load, differences, task_settings

if TYPE_CHECKING:
    from ..backends.base import Scorer
    from .sources import Source
    from .tasks import Task

log = logging.getLogger("bge_rerank_cli")


def checkpoint_to_resume(
    source: Source, task: Task[Any, Any], output: Any, config: LoaderConfig | None
) -> Checkpoint | None:
    """The checkpoint to resume from, once the input and the settings known before loading the model
    match it; ``None`` when there is nothing to resume (the job then starts from the beginning)."""
    path = str(output.path)
    if Checkpoint.nothing_to_resume(path):
        log.info(
            "nothing to resume (no %s, no %s): starting from the beginning.", path, Checkpoint.path_for(path)
        )
        return None
    checkpoint = Checkpoint.load(path)
    if checkpoint.input != source.name:
        raise ResumeError(
            f"{RESUME}: {path} was written from {checkpoint.input}, not {source.name}; refusing to mix "
            f"inputs. {start_over(path)}"
        )
    current = task_settings(task, source, output)
    if config is not None:
        current |= before_load(config, checkpoint.model_limit, checkpoint.settings)
    _require_same(path, checkpoint.settings, current, complete=False)
    return checkpoint


def resume_point(task: Task[Any, Any], output: Any, checkpoint: Checkpoint) -> ResumePoint:
    """Where the source picks up, with the output's last record (read within the checkpointed part) for
    the source to verify; the files are only read."""
    path = str(output.path)
    _require_size(path, checkpoint.output_bytes, path)
    if output.errors is not None:
        _require_size(str(output.errors), checkpoint.errors_bytes, path)
    last = None
    if checkpoint.last_record_line:
        last = last_jsonl_record(path, checkpoint.output_bytes)
        if last is None:
            raise ResumeError(f"{RESUME}: {path} is empty but its checkpoint says records were written.")
    return ResumePoint(path, checkpoint.last_line, checkpoint.last_record_line, last, task.mismatches)


def loaded_settings(
    source: Source, task: Task[Any, Any], output: Any, scorer: Scorer, config: LoaderConfig | None = None
) -> Settings:
    """Every setting a checkpoint records, as the loaded ``scorer`` resolved them (``config``: what it was
    loaded from, when known)."""
    return task_settings(task, source, output) | after_load(scorer, config)


def check_loaded(path: str, checkpoint: Checkpoint, settings: Settings) -> None:
    """The check once the model is loaded: every setting, resolved, must be the checkpoint's."""
    _require_same(path, checkpoint.settings, settings, complete=True)


def _require_same(path: str, recorded: Settings, current: Settings, *, complete: bool) -> None:
    lines = differences(recorded, current, complete=complete)
    if lines:
        listed = "".join(f"\n  {line}" for line in lines)
        raise ResumeError(
            f"{RESUME}: {path} was written with other settings; refusing to mix them in one file:{listed}\n"
            f"To continue it, resume with the checkpoint's settings. {start_over(path)}"
        )


def _require_size(path: str, size: int, output: str) -> None:
    """A file may have grown past its checkpoint (a group written, not yet checkpointed) but not shrunk."""
    try:
        actual = Path(path).stat().st_size
    except FileNotFoundError:
        actual = 0
    if actual < size:
        raise ResumeError(
            f"{RESUME}: {path} holds {actual} bytes but its checkpoint counts {size}: it was cut or "
            f"replaced after the job stopped; refusing to resume. {start_over(output)}"
        )
