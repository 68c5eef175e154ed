"""The Python API: the same scoring, reranking and batch jobs the CLI runs.

from bge_rerank_cli import Reranker
reranker = Reranker("BAAI/bge-reranker-v2-m3", device="cpu")
result = reranker.rerank("what is deep learning?", ["Deep learning is ...", "Apples are ..."], top_k=1)
result.results[0].score
report = reranker.rerank_file("candidates.jsonl", "reranked.jsonl", top_k=10, resume=True)
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .backends import Scorer
from .config import DEFAULT_CHUNK_OVERLAP, DEFAULT_MAX_CHUNKS, DEFAULT_MODEL, LoaderConfig, ScoreOptions
from .engine import JobControl, rank_documents, score_pairs
from .errors import RandomWeightsWarning, UsageError
from .jobs import Job, JsonlSource, Output, Report, RerankTask, ScoreTask, Source, Task, run
from .records import Document, Pair, RerankResult, Scored


class Reranker:
    """Score pairs and rerank candidates with one reranker, in memory or as resumable file jobs.

    Pass loader options as keywords (``device``, ``dtype``, ``max_length``, ``batch_size``, ``offline``,
    ``cache_dir``, ``revision``, ``trust_remote_code``, ``backend``, ``quantize``; for decoder rerankers
    such as Qwen3-Reranker ``template``, ``instruction`` and ``prefix_reuse``), a ready
    :class:`LoaderConfig`, or a ``scorer`` of your own that follows :class:`bge_rerank_cli.backends.Scorer`.
    Long passages: ``long_docs="chunk"`` (with ``chunk_overlap``, ``max_chunks``) scores them by their
    best window instead of truncating. ``score_cache`` (``"default"``, a SQLite path or a ``redis://``
    URL; bounded by ``score_cache_max_size``) remembers each pair's record: a pair scored once under
    these settings is never scored again. Errors are :class:`bge_rerank_cli.errors.BgeRerankError`
    subclasses; wrong arguments raise :class:`~bge_rerank_cli.errors.UsageError`, a ``ValueError``.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        config: LoaderConfig | None = None,
        scorer: Scorer | None = None,
        long_docs: str = "truncate",
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
        max_chunks: int = DEFAULT_MAX_CHUNKS,
        score_cache: str | None = None,
        score_cache_max_size: int | str | None = None,
        **options: Any,
    ) -> None:
        if config is not None and options:
            raise UsageError("pass either config= or loader options, not both.")
        self.config = config or LoaderConfig(model=model, **options)
        self.options = ScoreOptions(long_docs, chunk_overlap, max_chunks)
        self._scorer = scorer
        self._own_scorer = scorer is not None
        self._store: Any = None
        if score_cache is not None:
            from .score_cache import open_store

            self._store = open_store(score_cache, score_cache_max_size)
        self._bound: Any = None  # the store bound to the loaded scorer's settings, on first use
        self._bound_to: tuple[ScoreOptions, int] | None = None

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:
            self._scorer = self._load()
            if self._scorer.describe().get("random_weights"):
                warnings.warn(
                    f"{self.config.model} has RANDOM weights (a stand-in built by tools/random_model.py): "
                    "its scores and orders are meaningless.",
                    RandomWeightsWarning,
                    stacklevel=_callers_level(),
                )
        return self._scorer

    def _load(self) -> Scorer:
        """The model; with a score cache that recorded how this configuration loads, a scorer that loads
        it only when a pair is not in the cache (calls of known pairs never load it)."""
        from .backends import load_scorer
        from .jobs.settings import load_through_cache

        config = self.config
        return load_through_cache(self._store, config, lambda: load_scorer(config))

    def _control(self) -> JobControl:
        """How in-memory calls score: through the score cache when there is one, bound to the options and
        scorer of this call (both are attributes a caller may change)."""
        if self._store is None:
            return JobControl()
        if self._bound is None or self._bound_to != (self.options, id(self.scorer)):
            from .jobs.settings import bind_cache

            self._bound = bind_cache(self._store, self.scorer, self.options)
            self._bound_to = (self.options, id(self.scorer))
        return JobControl(cache=self._bound)

    def close(self) -> None:
        """Close the score cache's store (a SQLite connection, a Redis pool); the model stays loaded."""
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> Reranker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def kind(self) -> dict[str, str]:
        """What the model is and how it is scored, as ``bge-rerank doctor`` says it: ``template``
        (``cross-encoder`` or a decoder prompt) and ``formula`` (one line). Read from the model's
        config.json without loading it (the model is loaded when that file cannot be had on its own); a
        model of no known kind raises :class:`~bge_rerank_cli.errors.ModelError`, saying what to pass."""
        from .backends.families import formula, identify

        family = identify(self.config) if self._scorer is None else None
        template = (
            family.name if family is not None else str(getattr(self.scorer, "template", "cross-encoder"))
        )
        return {"template": template, "formula": formula(template)}

    @property
    def cache_stats(self) -> tuple[int, int]:
        """This object's score cache hits and misses so far (distinct pairs), ``(0, 0)`` without one."""
        return (self._bound.hits, self._bound.misses) if self._bound is not None else (0, 0)

    def score(self, query: str, passages: Sequence[str]) -> list[Scored]:
        """Score each passage against one query, in input order."""
        return self.score_pairs([Pair(query, p) for p in passages])

    def score_pairs(self, pairs: Iterable[Pair | tuple[str, str]]) -> list[Scored]:
        """Score arbitrary (query, passage) pairs, in input order."""
        return score_pairs(
            self.scorer,
            [p if isinstance(p, Pair) else Pair(*p) for p in pairs],
            options=self.options,
            control=self._control(),
        )

    def rerank(
        self,
        query: str,
        documents: Sequence[str | Mapping[str, Any]],
        *,
        top_k: int | None = None,
        min_score: float | None = None,
    ) -> RerankResult:
        """Rerank documents (strings, or mappings with "text" and other fields) best first."""
        docs = [_document(i, d) for i, d in enumerate(documents)]
        pairs = [Pair(query, d.text) for d in docs]
        scores = score_pairs(self.scorer, pairs, options=self.options, control=self._control())
        ranked = rank_documents(docs, scores, top_k=top_k, min_score=min_score)
        return RerankResult(query, ranked, candidates=len(docs))

    def score_file(
        self,
        path: str | Source,
        out: str,
        *,
        format: str = "jsonl",
        resume: bool = False,
        on_error: str = "fail",
        errors: str | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Report:
        """Score a JSONL file of ``{"query", "passage"}`` records into ``out``, as `bge-rerank score` does.

        With JSONL output the job checkpoints as it goes: when ``stop()`` turns true, or the process
        dies, the same call with ``resume=True`` continues without losing or repeating a record (with
        neither ``out`` nor its checkpoint it starts the job). A resume with other settings than the
        job's (model files, max length, dtype, ...) raises :class:`~bge_rerank_cli.errors.ResumeError`
        before writing anything. A :class:`~bge_rerank_cli.jobs.Source` may be given instead of a path
        (e.g. a TREC run).
        """
        return self._run(ScoreTask(self.options), path, out, format, resume, on_error, errors, stop)

    def rerank_file(
        self,
        path: str | Source,
        out: str,
        *,
        top_k: int | None = None,
        min_score: float | None = None,
        depth: int | None = None,
        format: str = "jsonl",
        resume: bool = False,
        on_error: str = "fail",
        errors: str | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Report:
        """Rerank a JSONL file of ``{"query", "documents"}`` records (or a first-stage run given as a
        :class:`~bge_rerank_cli.jobs.TrecSource`) into ``out``, as `bge-rerank rerank` does; resumable
        like :meth:`score_file`. ``format`` may also be ``"trec"`` or ``"tsv"``."""
        task = RerankTask(self.options, top_k, min_score, depth)
        return self._run(task, path, out, format, resume, on_error, errors, stop)

    def _run(
        self,
        task: Task[Any, Any],
        path: str | Source,
        out: str,
        fmt: str,
        resume: bool,
        on_error: str,
        errors: str | None,
        stop: Callable[[], bool] | None,
    ) -> Report:
        source = JsonlSource(path) if isinstance(path, str) else path
        job = Job(source, task, Output(out, fmt, errors), on_error=on_error, resume=resume)
        config = None if self._own_scorer else self.config  # a scorer of your own: its settings once loaded
        return run(job, lambda: self.scorer, config=config, stop=stop, cache=self._store)


def _callers_level() -> int:
    """The ``stacklevel`` of the first frame outside this package: a warning names the user's line."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


def _document(index: int, doc: str | Mapping[str, Any]) -> Document:
    if isinstance(doc, str):
        return Document(index, doc)
    if "text" not in doc or not isinstance(doc["text"], str):
        raise UsageError(f'document {index} needs a string "text" field.')
    return Document(index, doc["text"], {k: v for k, v in doc.items() if k != "text"})
