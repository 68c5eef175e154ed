"""The stand-in peer for bench/serve.py when infinity-emb cannot be installed or fails to serve:
sentence-transformers `CrossEncoder.rank` behind a minimal FastAPI app, with our request and response
shape on POST /v1/rerank (Jina/vLLM: ``query``, ``documents`` -> ``results[{index, relevance_score}]``)
and GET /ready once the model is loaded.

One request at a time runs the model (a lock; no batching across requests), as a plain sentence-transformers
service would. Configured by environment variables, run with uvicorn in the project venv:

    STANDIN_MODEL=DIR uvicorn serve_infinity_app:app --app-dir bench --host 127.0.0.1 --port 8081
"""

from __future__ import annotations

import os
import threading
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

MODEL = os.environ.get("STANDIN_MODEL", "")
BATCH_SIZE = int(os.environ.get("STANDIN_BATCH_SIZE", "32"))
MAX_LENGTH = int(os.environ.get("STANDIN_MAX_LENGTH", "512"))
state: dict[str, Any] = {}
lock = threading.Lock()


class RerankRequest(BaseModel):
    query: str
    documents: list[str]
    model: str | None = None
    top_n: int | None = None
    return_documents: bool = False


@asynccontextmanager
async def lifespan(app: FastAPI) -> Any:
    def load() -> None:
        import torch
        from sentence_transformers import CrossEncoder

        ce = CrossEncoder(MODEL, device="cpu", max_length=MAX_LENGTH, activation_fn=torch.nn.Sigmoid())
        ce.predict([("warm", "up")], show_progress_bar=False)
        state["model"] = ce

    threading.Thread(target=load, name="standin-load", daemon=True).start()
    yield


app = FastAPI(title="sentence-transformers CrossEncoder stand-in", lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/ready")
async def ready() -> JSONResponse:
    return JSONResponse(
        {"status": "ready" if "model" in state else "loading"}, 200 if "model" in state else 503
    )


@app.post("/v1/rerank")
def rerank(body: RerankRequest) -> dict[str, Any]:  # a plain def: FastAPI runs it in its thread pool
    with lock:
        ranked = state["model"].rank(
            body.query,
            body.documents,
            top_k=body.top_n or None,
            batch_size=BATCH_SIZE,
            show_progress_bar=False,
        )
    results = [{"index": int(r["corpus_id"]), "relevance_score": float(r["score"])} for r in ranked]
    return {"model": body.model or MODEL, "results": results}
