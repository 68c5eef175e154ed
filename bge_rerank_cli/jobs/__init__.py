"""Batch jobs that lose nothing, under every front end (CLI, Python API, Ray, HTTP service).

``sources`` (JSONL files and stdin, in-memory items, TREC runs, BEIR folders), ``tasks`` (score,
rerank), ``runner`` (:func:`run` a :class:`Job` into a :class:`Report`), ``intake`` (every line
accounted for), ``checkpoint`` (resume without loss or duplication), ``settings`` (what a checkpoint
binds a resume to), ``resume`` (the checks before a resume writes anything) and ``signals`` (a stop
switch).
Nothing here imports Typer, Rich, torch or a web framework.
"""

from __future__ import annotations

from .checkpoint import Checkpoint, ResumePoint
from .intake import ErrorLog, Intake, OnError
from .runner import Job, Output, OutputFormat, Report, run
from .settings import Setting
from .signals import StopSwitch
from .sources import BeirSource, ItemsSource, JsonlSource, Source, TrecSource, beir_paths, read_all
from .tasks import RerankTask, ScoreTask, Task

__all__ = [
    "BeirSource",
    "Checkpoint",
    "ErrorLog",
    "Intake",
    "ItemsSource",
    "Job",
    "JsonlSource",
    "OnError",
    "Output",
    "OutputFormat",
    "Report",
    "RerankTask",
    "ResumePoint",
    "ScoreTask",
    "Setting",
    "Source",
    "StopSwitch",
    "Task",
    "TrecSource",
    "beir_paths",
    "read_all",
    "run",
]
