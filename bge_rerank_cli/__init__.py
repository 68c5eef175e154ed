"""bge-rerank: batch reranking with cross-encoders, from the shell and from Python.

The Python API lives in :mod:`bge_rerank_cli.api`; importing this package does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import Reranker
    from .config import LoaderConfig
    from .records import Document, Pair, RankedDocument, RerankResult, Scored

__all__ = ["Document", "LoaderConfig", "Pair", "RankedDocument", "RerankResult", "Reranker", "Scored"]

_LAZY = {
    "Reranker": "api",
    "LoaderConfig": "config",
    "Document": "records",
    "Pair": "records",
    "RankedDocument": "records",
    "RerankResult": "records",
    "Scored": "records",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
