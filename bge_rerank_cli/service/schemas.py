"""Request and response bodies of each dialect, field names exactly as the providers spell them.

Cohere v2 (``POST /v2/rerank``), Jina and vLLM (``POST /v1/rerank``), Hugging Face TEI (``POST /rerank``)
and ours (``POST /score``). Requests accept unknown fields (clients send extras such as ``rank_fields``
or ``truncation_direction``); responses carry exactly the documented fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextDocument(BaseModel):
    """A document given as an object: its ``text`` (other fields are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")
    text: str


Documents = list[str | TextDocument]


def texts_of(documents: Documents) -> list[str]:
    return [d if isinstance(d, str) else d.text for d in documents]


# --- Cohere v2 ---------------------------------------------------------------------------------


class CohereRerankRequest(_Request):
    model: str | None = None
    query: str
    documents: Documents
    top_n: int | None = Field(default=None, ge=1)
    max_tokens_per_doc: int | None = Field(default=None, ge=1)
    return_documents: bool = False  # Cohere v1's switch; v2 clients do not send it


class CohereDocument(BaseModel):
    text: str


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: CohereDocument | None = None


class CohereApiVersion(BaseModel):
    version: str = "2"


class CohereBilledUnits(BaseModel):
    search_units: int


class CohereMeta(BaseModel):
    api_version: CohereApiVersion = Field(default_factory=CohereApiVersion)
    billed_units: CohereBilledUnits


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: CohereMeta


# --- Jina / vLLM -------------------------------------------------------------------------------


class JinaRerankRequest(_Request):
    model: str | None = None
    query: str
    documents: Documents
    top_n: int | None = Field(default=None, ge=0)  # 0 or null: all (vLLM's default is 0)
    return_documents: bool = True


class JinaDocument(BaseModel):
    text: str


class JinaResult(BaseModel):
    index: int
    relevance_score: float
    document: JinaDocument | None = None


class JinaUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class JinaRerankResponse(BaseModel):
    model: str
    usage: JinaUsage
    results: list[JinaResult]


# --- Hugging Face TEI --------------------------------------------------------------------------


class TeiRerankRequest(_Request):
    query: str
    texts: list[str]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None  # we always cut passages to fit, as the batch tool does


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


# --- ours: POST /score -------------------------------------------------------------------------


class ScoreRequest(_Request):
    """Pairs as `bge-rerank score` reads them: objects with ``query`` and ``passage`` (or ``document``,
    ``text``, ``doc``) and any other fields, which come back unchanged."""

    pairs: list[dict[str, Any]]


class ScoreResponse(BaseModel):
    model: str
    results: list[dict[str, Any]]
    usage: JinaUsage
