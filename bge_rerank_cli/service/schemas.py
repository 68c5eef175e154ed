"""Request and response bodies of each dialect, field names exactly as the providers spell them.

Cohere v2 (``POST /v2/rerank``), Jina and vLLM (``POST /v1/rerank``), Hugging Face TEI (``POST /rerank``)
and ours (``POST /score``). Requests accept unknown fields (clients send extras such as ``rank_fields``
or ``truncation_direction``); responses carry exactly the documented fields.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError


def lone_surrogate(value: Any, where: str = "") -> str | None:
    """Where in ``value`` (a JSON value) a string holds a lone UTF-16 surrogate (JSON's ``"\\udc80"``,
    which no UTF-8 text can hold and no tokenizer takes), as ``[0].text``; ``None`` when nowhere."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "(the value)"
        return None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = lone_surrogate(key, f"{where} (a key)") if isinstance(key, str) else None
        found = found or lone_surrogate(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}")
        if found:
            return found
    return None


class _Request(BaseModel):
    """Unknown fields are accepted (and ignored). Text must be Unicode that UTF-8 can carry: a lone
    surrogate anywhere is refused with 422 naming its place, as the batch tool refuses such a line."""

    model_config = ConfigDict(extra="allow")

    @field_validator("*", mode="before")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        where = lone_surrogate(value)
        if where is not None:
            place = "" if where == "(the value)" else f" at {where.lstrip('.')}"
            raise PydanticCustomError(
                "lone_surrogate",
                "holds a lone surrogate escape (such as \\udc80){place}, which is not Unicode text; "
                "send valid UTF-8",
                {"place": place},
            )
        return value


def _not_empty(text: str) -> str:
    if not text.strip():
        raise PydanticCustomError("empty", "is empty: there is nothing to rank against")
    return text


Query = Annotated[str, AfterValidator(_not_empty)]


class TextDocument(BaseModel):
    """A document given as an object: its ``text`` (other fields are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")
    text: str


Documents = list[str | TextDocument]


def texts_of(documents: Documents) -> list[str]:
    return [d if isinstance(d, str) else d.text for d in documents]


def error_body(message: str, kind: str) -> dict[str, str]:
    """Every error answer's body, in a shape every dialect's client can show: TEI's ``error`` and
    ``error_type`` (Validation, Overloaded, Unhealthy, Backend, ...), Cohere's ``message``, and
    ``detail``, which the Jina clients read."""
    return {"error": message, "error_type": kind, "message": message, "detail": message}


# --- Cohere v2 ---------------------------------------------------------------------------------


class CohereRerankRequest(_Request):
    model: str | None = None
    query: Query
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
    query: Query
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
    model: str | None = (
        None  # ours: TEI serves one model; here it picks one of several (default: the default)
    )
    query: Query
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
    model: str | None = None  # which served model (default: the default one)


class ScoreResponse(BaseModel):
    model: str
    results: list[dict[str, Any]]
    usage: JinaUsage
