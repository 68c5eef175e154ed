"""A fake scorer for engine and output-format tests only: no model, deterministic logits."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from bge_rerank_cli.engine import Encoded
from bge_rerank_cli.records import Pair


class FakeScorer:
    """Logit = a stable hash of the pair mapped to [-4, 4); token ids are the UTF-8 bytes of the text."""

    def __init__(self, batch_size: int = 4) -> None:
        self._batch_size = batch_size
        self.encoded: list[Pair] = []
        self.batches: list[int] = []
        self._texts: dict[tuple[int, ...], Pair] = {}

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def encode(self, pairs: Sequence[Pair]) -> list[Encoded]:
        self.encoded.extend(pairs)
        out = []
        for pair in pairs:
            ids = tuple((pair.query + "\x00" + pair.passage).encode())
            self._texts[ids] = pair
            out.append(Encoded(list(ids)))
        return out

    def logits(self, batch: Sequence[Encoded]) -> list[float]:
        self.batches.append(len(batch))
        return [self.logit_of(self._texts[tuple(e.ids)]) for e in batch]

    @staticmethod
    def logit_of(pair: Pair) -> float:
        return (zlib.crc32(f"{pair.query}|{pair.passage}".encode()) % 8000) / 1000.0 - 4.0
