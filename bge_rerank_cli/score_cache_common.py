"""What the score cache's stores (SQLite, Redis) share, in a module of their own so that neither imports
the other: the typed records of what a store holds, and how a store's place is shown without secrets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit


def hit_rate(hits: int, misses: int) -> float | None:
    """The share of lookups the cache answered; ``None`` before any."""
    return hits / (hits + misses) if hits + misses else None


def known_line(hits: int, misses: int) -> str:
    """How a summary says it: ``10 of 12 distinct pairs known (83%)``."""
    rate = hit_rate(hits, misses)
    return f"{hits} of {hits + misses} distinct pairs known" + (f" ({rate:.0%})" if rate is not None else "")


@dataclass(frozen=True)
class ModelStats:
    entries: int
    bytes: int
    hits: int
    misses: int

    @property
    def hit_rate(self) -> float | None:
        return hit_rate(self.hits, self.misses)


@dataclass(frozen=True)
class StoreStats:
    """What a store holds: entries and their bytes, lookups that hit or missed (all time), per model."""

    where: str
    entries: int
    bytes: int
    max_bytes: int
    file_bytes: int | None
    models: dict[str, ModelStats] = field(default_factory=dict)

    @property
    def hits(self) -> int:
        return sum(m.hits for m in self.models.values())

    @property
    def misses(self) -> int:
        return sum(m.misses for m in self.models.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "entries": self.entries,
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "file_bytes": self.file_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": hit_rate(self.hits, self.misses),
            "models": {
                name: {
                    "entries": m.entries,
                    "bytes": m.bytes,
                    "hits": m.hits,
                    "misses": m.misses,
                    "hit_rate": m.hit_rate,
                }
                for name, m in sorted(self.models.items())
            },
        }


SECRET_PARAMETERS = ("password", "pass", "pwd", "auth", "token")


def public_where(where: str) -> str:
    """Where a store is, fit to show (``/info``, reports): a URL without the password of its user part
    (``redis://:secret@host:6379/0`` is ``redis://host:6379/0``) or one in its query; a file path as is."""
    if "://" not in where:
        return where
    parts = urlsplit(where)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    asked = parse_qsl(parts.query, keep_blank_values=True)
    query = [(k, v) for k, v in asked if k.lower() not in SECRET_PARAMETERS]
    netloc = f"{user}@{hostport}" if user else hostport
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    shown += f"?{urlencode(query)}" if query else ""
    return shown + (f"#{parts.fragment}" if parts.fragment else "")
