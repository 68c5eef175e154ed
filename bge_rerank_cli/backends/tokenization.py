"""Pair tokenisation on the Rust ``tokenizers`` library alone (no torch), shared by every backend.

The query keeps up to ``query_cap`` tokens; the passage gets the rest of ``max_length`` and is cut
first (FlagEmbedding's rule), or, in window mode, split into overlapping windows that each fit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ..records import Pair
from .base import Encoded


class PairTokenizer:
    def __init__(
        self,
        tokenizer_json: str,
        *,
        max_length: int,
        query_cap: int,
        pad_id: int,
        use_type_ids: bool,
    ) -> None:
        from tokenizers import Tokenizer

        # A private copy: the model's tokenizer may carry truncation/padding settings of its own.
        self._tok = Tokenizer.from_str(tokenizer_json)
        self._tok.no_truncation()
        self._tok.no_padding()
        self.max_length = max_length
        self.specials = self._tok.num_special_tokens_to_add(is_pair=True)
        self.query_cap = max(1, min(query_cap, max_length - self.specials - 1))
        self.pad_id = pad_id
        self.use_type_ids = use_type_ids

    def _queries(self, pairs: Sequence[Pair]) -> dict[str, tuple[Any, int]]:
        """Each distinct query, encoded once and cut to its cap, with the number of tokens cut."""
        queries = list(dict.fromkeys(p.query for p in pairs))
        encoded = self._tok.encode_batch(queries, add_special_tokens=False)
        out = {}
        for text, enc in zip(queries, encoded, strict=True):
            dropped = max(0, len(enc) - self.query_cap)
            if dropped:
                enc.truncate(self.query_cap)
            out[text] = (enc, dropped)
        return out

    def _pack(self, query: Any, passage: Any, dropped: int, query_dropped: int, span: Any = None) -> Encoded:
        enc = self._tok.post_process(query, passage, add_special_tokens=True)
        return Encoded(
            enc.ids,
            enc.type_ids if self.use_type_ids else None,
            dropped,
            query_dropped=query_dropped,
            span=span,
        )

    def _fitted(self, pairs: Sequence[Pair]) -> Iterator[tuple[Pair, Any, Any, int, int]]:
        """Per pair: the pair, its passage's tokens, its query's (capped) tokens, the query tokens cut,
        and the room left for the passage beside the query and the special tokens."""
        queries = self._queries(pairs)
        passages = self._tok.encode_batch([p.passage for p in pairs], add_special_tokens=False)
        for pair, passage in zip(pairs, passages, strict=True):
            query, query_dropped = queries[pair.query]
            yield pair, passage, query, query_dropped, self.max_length - len(query) - self.specials

    def encode(self, pairs: Sequence[Pair]) -> list[Encoded]:
        """One sequence per pair; passage tokens past the budget are dropped (and counted)."""
        out = []
        for _, passage, query, query_dropped, room in self._fitted(pairs):
            dropped = max(0, len(passage) - room)
            if dropped:
                passage.truncate(room)
            out.append(self._pack(query, passage, dropped, query_dropped))
        return out

    def encode_windows(self, pairs: Sequence[Pair], *, overlap: int, max_chunks: int) -> list[list[Encoded]]:
        """Per pair, the passage split into windows that each fit beside the query.

        Windows are ``room`` tokens long and overlap by ``overlap`` tokens; each carries the character
        span of its passage text. A passage that fits gives one window spanning the whole text. Past
        ``max_chunks`` windows the rest of the passage is dropped (and counted).
        """
        out = []
        for pair, passage, query, query_dropped, room in self._fitted(pairs):
            if len(passage) <= room:
                out.append([self._pack(query, passage, 0, query_dropped, (0, len(pair.passage)))])
                continue
            total = len(passage)
            step_overlap = min(overlap, room // 2)  # windows must advance
            passage.truncate(room, stride=step_overlap)
            windows = [passage, *passage.overflowing][:max_chunks]
            dropped = total - min(total, room + (room - step_overlap) * (len(windows) - 1))
            out.append([self._pack(query, w, dropped, query_dropped, _span(w)) for w in windows])
        return out

    def clip(self, texts: Sequence[str], max_tokens: int) -> list[tuple[str, int]]:
        return clip_texts(self._tok, texts, max_tokens)


def clip_texts(tok: Any, texts: Sequence[str], max_tokens: int) -> list[tuple[str, int]]:
    """Each text cut to its first ``max_tokens`` tokens of ``tok`` (a ``tokenizers.Tokenizer``), at a token
    boundary, with the number of tokens cut."""
    out = []
    for text, enc in zip(texts, tok.encode_batch(list(texts), add_special_tokens=False), strict=True):
        if len(enc) <= max_tokens:
            out.append((text, 0))
            continue
        end = enc.offsets[max_tokens - 1][1] if max_tokens > 0 else 0
        out.append((text[:end], len(enc) - max_tokens))
    return out


def _span(window: Any) -> tuple[int, int]:
    offsets = [o for o in window.offsets if o != (0, 0)] or [(0, 0)]
    return offsets[0][0], max(end for _, end in offsets)
