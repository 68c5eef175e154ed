"""The seam between the engine and a model backend: what a scorer is and what it exchanges (no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import LoaderConfig
from ..records import Pair

# Real tokens per batch past which a CPU gains nothing from a bigger batch (measured: tokens/s is flat
# from ~250 tokens per forward pass up), so padding is all that a longer batch would add.
CPU_FILL_TOKENS = 512


@dataclass(frozen=True, slots=True)
class Encoded:
    """A tokenised pair ready for the model.

    ``dropped_tokens`` counts passage tokens cut off, ``query_dropped`` query tokens past the query's
    cap, and ``span`` is the (start, end) character range of the passage a window covers. ``prefix``
    counts the leading ids that every passage of the same query shares (a decoder prompt's part before
    the passage; 0 for a cross-encoder), whose key/value states a backend may compute once.
    """

    ids: list[int]
    type_ids: list[int] | None = None
    dropped_tokens: int = 0
    query_dropped: int = 0
    span: tuple[int, int] | None = None
    prefix: int = 0

    @property
    def prefix_key(self) -> tuple[int, ...]:
        """The shared prefix's ids: equal for every passage of one query (empty for a cross-encoder)."""
        return tuple(self.ids[: self.prefix])


class BatchTooLarge(Exception):
    """A scorer raises this when a batch does not fit in (GPU) memory; the engine splits the batch."""


class BatchScorer(Protocol):
    """What the engine needs: tokenisation, batch limits and a forward pass.

    ``batch_tokens`` is the padded-token budget of one forward pass (pairs x longest sequence), and
    ``fill_tokens`` the real tokens after which a batch stops taking shorter sequences: past it, the
    padding they would add costs more than a bigger batch gains (small on CPU, large on a GPU).
    """

    @property
    def batch_size(self) -> int: ...

    @property
    def batch_tokens(self) -> int: ...

    @property
    def fill_tokens(self) -> int: ...

    def encode(self, pairs: Sequence[Pair]) -> list[Encoded]: ...

    def encode_windows(
        self, pairs: Sequence[Pair], *, overlap: int, max_chunks: int
    ) -> list[list[Encoded]]: ...

    def logits(self, batch: Sequence[Encoded]) -> list[float]: ...


class Scorer(BatchScorer, Protocol):
    """A loaded model as every front end sees it (what :func:`bge_rerank_cli.backends.load_scorer` returns).

    ``max_length`` is the effective tokens per pair: the caller's ``config.max_length`` clamped to the
    model's ``model_limit``, once, when the scorer is built. ``load_seconds`` is how long loading took.
    """

    config: LoaderConfig
    device: str
    dtype: str
    load_seconds: float
    max_length: int
    model_limit: int

    def describe(self) -> dict[str, Any]: ...
