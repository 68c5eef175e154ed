"""What a score cache store holds, as the stores (SQLite, Redis) report it: typed records of their own,
so each store imports them without importing the other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelStats:
    entries: int
    bytes: int
    hits: int
    misses: int

    @property
    def hit_rate(self) -> float | None:
        asked = self.hits + self.misses
        return self.hits / asked if asked else None


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
        asked = self.hits + self.misses
        return {
            "where": self.where,
            "entries": self.entries,
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "file_bytes": self.file_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / asked if asked else None,
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
