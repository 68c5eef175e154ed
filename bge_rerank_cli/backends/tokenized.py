"""The scorer base every backend shares: the effective length (the caller's ``max_length`` clamped to the
model's limit, here and only here), batch limits, and tokenising pairs into what the model reads, as
cross-encoder pairs (:mod:`.tokenization`) or as a decoder reranker's prompts (:mod:`.prompts`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..config import LoaderConfig
from ..records import Pair
from .base import CPU_FILL_TOKENS, Encoded
from .tokenization import PairTokenizer

if TYPE_CHECKING:
    from .prompts import PromptTokenizer

log = logging.getLogger("bge_rerank_cli")


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
            query_max_length=config.query_max_length,
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


def right_padded(batch: Sequence[Encoded], pad_id: int) -> tuple[Any, Any]:
    """``(ids, mask)`` long tensors of a batch, each row's tokens first and padding after (positions count
    from 0 in every row, as the BGE layerwise and lightweight references pad)."""
    import torch

    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, enc in enumerate(batch):
        ids[row, : len(enc.ids)] = torch.tensor(enc.ids)
        mask[row, : len(enc.ids)] = 1
    return ids, mask


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
