"""A fake scorer for engine and output-format tests only: no model, deterministic logits."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from bge_rerank_cli.backends.base import BatchTooLarge, Encoded
from bge_rerank_cli.config import LoaderConfig
from bge_rerank_cli.records import Pair


class FakeScorer:
    """Logit = a stable hash of the pair mapped to [-4, 4); token ids are the UTF-8 bytes of the text."""

    device = "cpu"
    dtype = "fp32"
    load_seconds = 0.0
    max_length = 512
    model_limit = 512

    def __init__(
        self,
        batch_size: int = 4,
        batch_tokens: int | None = None,
        fail_above: int | None = None,
        fill_tokens: int | None = None,
    ) -> None:
        self._batch_size = batch_size
        self._batch_tokens = batch_tokens or batch_size * 100
        self._fill_tokens = fill_tokens or self._batch_tokens
        self.fail_above = fail_above  # pretend to run out of memory above this many padded tokens
        self.encoded: list[Pair] = []
        self.batches: list[int] = []
        self.widths: list[int] = []
        self.scored: list[Pair] = []
        self._texts: dict[tuple[int, ...], Pair] = {}
        self.config = LoaderConfig(model="fake", batch_size=batch_size)

    def describe(self) -> dict[str, str]:
        return {"model": "fake", "device": "cpu", "dtype": "fp32", "backend": "fake"}

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def batch_tokens(self) -> int:
        return self._batch_tokens

    @property
    def fill_tokens(self) -> int:
        return self._fill_tokens

    def encode_windows(self, pairs: Sequence[Pair], *, overlap: int, max_chunks: int) -> list[list[Encoded]]:
        return [[e] for e in self.encode(pairs)]

    def encode(self, pairs: Sequence[Pair]) -> list[Encoded]:
        self.encoded.extend(pairs)
        out = []
        for pair in pairs:
            ids = tuple((pair.query + "\x00" + pair.passage).encode())
            self._texts[ids] = pair
            out.append(Encoded(list(ids)))
        return out

    def logits(self, batch: Sequence[Encoded]) -> list[float]:
        width = max(len(e.ids) for e in batch)
        if self.fail_above is not None and len(batch) > 1 and len(batch) * width > self.fail_above:
            raise BatchTooLarge(f"{len(batch)} x {width} tokens")
        self.batches.append(len(batch))
        self.widths.append(width)
        self.scored.extend(self._texts[tuple(e.ids)] for e in batch)
        return [self.logit_of(self._texts[tuple(e.ids)]) for e in batch]

    @staticmethod
    def logit_of(pair: Pair) -> float:
        return (zlib.crc32(f"{pair.query}|{pair.passage}".encode()) % 8000) / 1000.0 - 4.0
