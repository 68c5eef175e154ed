"""The Python API: the same scoring and reranking the CLI runs.

from bge_rerank_cli import Reranker
reranker = Reranker("BAAI/bge-reranker-v2-m3", device="cpu")
result = reranker.rerank("what is deep learning?", ["Deep learning is ...", "Apples are ..."], top_k=1)
result.results[0].score
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .config import (
    DEFAULT_CHUNK_OVERLAP,
    DEFAULT_MAX_CHUNKS,
    DEFAULT_MODEL,
    LoaderConfig,
    LongDocs,
    ScoreOptions,
)
from .engine import Scorer, rank_documents, score_pairs
from .errors import UsageError
from .records import Document, Pair, RerankResult, Scored


class Reranker:
    """Score pairs and rerank candidates with one cross-encoder.

    Pass loader options as keywords (``device``, ``dtype``, ``max_length``, ``batch_size``, ``offline``,
    ``cache_dir``, ``revision``, ``trust_remote_code``), a ready :class:`LoaderConfig`, or a ``scorer``
    of your own that follows :class:`bge_rerank_cli.engine.Scorer`. Long passages: ``long_docs="chunk"``
    (with ``chunk_overlap``, ``max_chunks``) scores them by their best window instead of truncating.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        config: LoaderConfig | None = None,
        scorer: Scorer | None = None,
        long_docs: LongDocs = "truncate",
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
        max_chunks: int = DEFAULT_MAX_CHUNKS,
        **options: Any,
    ) -> None:
        if config is not None and options:
            raise UsageError("pass either config= or loader options, not both.")
        self.config = config or LoaderConfig(model=model, **options)
        self.options = ScoreOptions(long_docs, chunk_overlap, max_chunks)
        self._scorer = scorer

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:
            from .loader import load_scorer

            self._scorer = load_scorer(self.config)
        return self._scorer

    def score(self, query: str, passages: Sequence[str]) -> list[Scored]:
        """Score each passage against one query, in input order."""
        return self.score_pairs([Pair(query, p) for p in passages])

    def score_pairs(self, pairs: Iterable[Pair | tuple[str, str]]) -> list[Scored]:
        """Score arbitrary (query, passage) pairs, in input order."""
        return score_pairs(
            self.scorer, [p if isinstance(p, Pair) else Pair(*p) for p in pairs], options=self.options
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
        scores = score_pairs(self.scorer, [Pair(query, d.text) for d in docs], options=self.options)
        ranked = rank_documents(docs, scores, top_k=top_k, min_score=min_score)
        return RerankResult(query, ranked, candidates=len(docs))


def _document(index: int, doc: str | Mapping[str, Any]) -> Document:
    if isinstance(doc, str):
        return Document(index, doc)
    if "text" not in doc or not isinstance(doc["text"], str):
        raise UsageError(f'document {index} needs a string "text" field.')
    return Document(index, doc["text"], {k: v for k, v in doc.items() if k != "text"})
