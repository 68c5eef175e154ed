"""Pair tokenisation on the Rust ``tokenizers`` library alone (no torch), shared by every backend.

The query keeps up to ``query_cap`` tokens; the passage gets the rest of ``max_length`` and is cut
first (FlagEmbedding's rule), or, in window mode, split into overlapping windows that each fit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..config import LoaderConfig
from ..records import Pair
from .base import CPU_FILL_TOKENS, Encoded

if TYPE_CHECKING:
    from .prompts import PromptTokenizer

log = logging.getLogger("bge_rerank_cli")


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


class TokenizedScorer:
    """What every backend's scorer shares: the effective length, batch limits and tokenisation.

    A backend calls :meth:`_setup` with its model's tokenizer and token limit, and adds ``logits`` and
    ``describe``. The caller's ``max_length`` is clamped to the model's limit here, and only here.
    """

    config: LoaderConfig
    device: str = "cpu"
    dtype: str = "fp32"
    load_seconds: float = 0.0
    max_length: int
    model_limit: int
    pairs: PairTokenizer | PromptTokenizer
    template: str = "cross-encoder"
    backend: str = "torch"

    random_weights: bool = False

    def _setup(self, config: LoaderConfig, tokenizer_json: str, *, model_limit: int, pad_id: int,
               use_type_ids: bool, random_weights: bool = False) -> None:  # fmt: skip
        self.config = config
        self.random_weights = random_weights
        self.model_limit = model_limit
        self.max_length = effective_max_length(config, model_limit)
        self.pairs = PairTokenizer(
            tokenizer_json,
            max_length=self.max_length,
            query_cap=config.query_cap,
            pad_id=pad_id,
            use_type_ids=use_type_ids,
        )

    def _setup_prompt(self, config: LoaderConfig, template: str, tokenizer_json: str, *, model_limit: int,
                      pad_id: int, bos_id: int | None, random_weights: bool = False) -> None:  # fmt: skip
        """:meth:`_setup` for a decoder reranker: pairs become ``template``'s prompt."""
        from .prompts import TEMPLATES, PromptTokenizer

        self.config = config
        self.random_weights = random_weights
        self.model_limit = model_limit
        self.max_length = effective_max_length(config, model_limit)
        self.template = template
        self.pairs = PromptTokenizer(
            tokenizer_json,
            TEMPLATES[template],
            instruction=config.instruction,
            max_length=self.max_length,
            query_cap=config.query_cap,
            pad_id=pad_id,
            bos_id=bos_id,
        )

    @property
    def query_cap(self) -> int:
        return self.pairs.query_cap

    @property
    def instruction(self) -> str | None:
        """A decoder reranker's task instruction, as its prompts carry it (``None`` for a cross-encoder)."""
        return getattr(self.pairs, "instruction", None)

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def batch_tokens(self) -> int:
        return self.config.batch_tokens or self.config.batch_size * self.max_length

    @property
    def fill_tokens(self) -> int:
        return CPU_FILL_TOKENS

    def encode(self, pairs: Sequence[Pair]) -> list[Encoded]:
        return self.pairs.encode(pairs)

    def encode_windows(self, pairs: Sequence[Pair], *, overlap: int, max_chunks: int) -> list[list[Encoded]]:
        return self.pairs.encode_windows(pairs, overlap=overlap, max_chunks=max_chunks)

    def clip(self, texts: Sequence[str], max_tokens: int) -> list[tuple[str, int]]:
        return self.pairs.clip(texts, max_tokens)

    def describe(self) -> dict[str, Any]:
        """What ran: model, device, dtype, backend, effective max length, whether the weights are a
        random stand-in, and a decoder reranker's template."""
        described = {"model": self.config.model, "device": self.device, "dtype": self.dtype,
                     "backend": self.backend, "max_length": self.max_length,
                     "random_weights": self.random_weights}  # fmt: skip
        if self.template != "cross-encoder":
            described["template"] = self.template
        return described


def effective_max_length(config: LoaderConfig, model_limit: int) -> int:
    """The tokens per pair a scorer uses: the requested length, or the model's limit when that is lower."""
    if config.max_length <= model_limit:
        return config.max_length
    log.warning(
        "max length %d is more than %s accepts; using its limit, %d tokens.",
        config.max_length,
        config.model,
        model_limit,
    )
    return model_limit
