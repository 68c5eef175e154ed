"""`bge-rerank serve`: the reranker as an HTTP service speaking the Cohere v2, Jina/vLLM and TEI rerank
APIs, on the same engine as the batch commands. ``core`` (the engine behind the cross-request batcher;
no web framework), ``schemas`` (each dialect's bodies), ``metrics`` (Prometheus), ``app`` (FastAPI)."""

from __future__ import annotations

INSTALL_HINT = "pip install 'bge-rerank-cli[serve]'"
