"""A scorer known from a record of an earlier load: what a job reads of a scorer before its first forward
pass (device, dtype, effective max length, template, batch limits, ``describe()``), at once, and the
model itself only when a pair needs scoring.

A score cache keeps one such record per configuration it has seen loaded (see
:func:`bge_rerank_cli.jobs.settings.load_through_cache`), so a job whose pairs are all in the cache never loads
the model. When a pair does need the model, it is loaded then, and what it resolved is checked against the
record: a scorer never scores under settings other than the ones its records were keyed and checkpointed
with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..config import LoaderConfig
from ..errors import ModelError
from ..records import Pair
from .base import Encoded, Scorer

# What a record holds besides describe(): the scorer's own attributes a job reads before scoring.
FACTS = ("device", "dtype", "max_length", "model_limit", "template", "instruction", "query_cap",
         "batch_size", "batch_tokens", "fill_tokens", "groups_prefixes")  # fmt: skip


def facts_of(scorer: Any) -> dict[str, Any]:
    """What :class:`RecordedScorer` needs to stand in for ``scorer`` (a loaded one, or a recorded one)."""
    if isinstance(scorer, RecordedScorer):
        return dict(scorer.facts)
    facts = {name: getattr(scorer, name, None) for name in FACTS}
    facts["template"] = str(facts["template"] or "cross-encoder")
    facts["groups_prefixes"] = bool(facts["groups_prefixes"])
    return {**facts, "backend": scorer.config.backend, "describe": scorer.describe()}


class RecordedScorer:
    """A :class:`Scorer` from ``facts`` (:func:`facts_of` an earlier load of ``config``) that calls
    ``load()`` (which records what it loaded) the first time it must encode or score. ``config`` is the
    requested configuration; the scorer's own has the backend the record resolved. ``loaded`` tells
    whether the model was needed."""

    device: str
    dtype: str
    max_length: int
    model_limit: int
    batch_size: int
    batch_tokens: int
    fill_tokens: int

    def __init__(self, config: LoaderConfig, facts: dict[str, Any], load: Callable[[], Scorer]) -> None:
        from dataclasses import replace

        self.config = replace(config, backend=str(facts["backend"]))
        self.facts = facts
        self.load_seconds = 0.0
        self._load = load
        self._real: Scorer | None = None
        self._lock = threading.Lock()
        for name in FACTS:
            setattr(self, name, facts[name])

    @property
    def loaded(self) -> bool:
        return self._real is not None

    def real(self) -> Scorer:
        """The loaded scorer (loaded now if it was not), refused if it resolved other than recorded."""
        with self._lock:
            if self._real is None:
                scorer = self._load()
                if isinstance(scorer, RecordedScorer):  # the loader gave one of these: its model, then
                    scorer = scorer.real()
                differ = sorted(
                    name for name, value in facts_of(scorer).items() if self.facts.get(name) != value
                )
                if differ:
                    raise ModelError(
                        f"{self.config.model} loaded with other settings ({', '.join(differ)}) than the score "
                        "cache recorded for it; nothing is scored with them in this job.",
                        hint="The record is replaced now; run the job again (with --resume if it wrote a file).",
                    )
                self.load_seconds = scorer.load_seconds
                self._real = scorer
            return self._real

    def describe(self) -> dict[str, Any]:
        return dict(self.facts["describe"])

    def encode(self, pairs: Sequence[Pair]) -> list[Encoded]:
        return self.real().encode(pairs)

    def encode_windows(self, pairs: Sequence[Pair], *, overlap: int, max_chunks: int) -> list[list[Encoded]]:
        return self.real().encode_windows(pairs, overlap=overlap, max_chunks=max_chunks)

    def logits(self, batch: Sequence[Encoded]) -> list[float]:
        return self.real().logits(batch)
