"""The score cache: a pair scored once under one set of settings is never scored again.

An entry's key is a digest of everything that changes a pair's record (the model's files, backend,
quantisation, dtype, max length and the query's share of it, template and instruction, the long-passage
options) and of the exact query and passage text; its value is the record's scoring part (:class:`Scored`:
logit, truncation facts, best window). A changed setting therefore never meets an old entry.

Stores: one SQLite file (the embedded default, ``sqlite3`` in WAL mode, safe with several processes
writing at once) or a Redis-protocol server shared by replicas (``redis://`` / ``valkey://``). Both are
bounded, evicting the least recently used entries. A store that fails (a corrupt file, a server gone)
never gives a wrong score and never stops the work: :class:`PairCache` warns once and runs uncached.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from .errors import UsageError
from .records import Chunk, Pair, Scored
from .score_cache_common import ModelStats, StoreStats

log = logging.getLogger(__name__)

DEFAULT = "default"
ENV = "BGE_RERANK_SCORE_CACHE"
FORMAT = 1  # of keys and values: a change makes old entries unreachable, never misread
DEFAULT_MAX_SIZE = 1 << 30  # 1 GiB of entries
BUSY_TIMEOUT = 30.0  # seconds a batch job waits for another writer of the SQLite file
SERVICE_BUSY_TIMEOUT = (
    2.0  # a service's: a file locked longer fails the call (the cache is tried again later)
)
ENTRY_OVERHEAD = 48  # bytes an entry costs beyond its key, value and model name (index, row header)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


def parse_size(text: str) -> int:
    """``500MB``, ``2GiB``, ``1000000`` as bytes; a :class:`UsageError` for anything else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise UsageError(f"score cache size {text!r}: give bytes, or a number with KB, MB, GB, MiB or GiB.")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1 << 16:
        raise UsageError(f"score cache size {text!r} is below 64 KiB: too small to hold a batch.")
    return size


class CacheStore(Protocol):
    """Where entries live. Every method may raise; :class:`PairCache` turns that into a warning."""

    where: str  # fit to show: a URL without its password (see public_where)
    max_bytes: int

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]: ...

    def put_many(self, entries: Sequence[tuple[bytes, bytes]], model: str) -> None: ...

    def count(self, model: str, hits: int, misses: int) -> None: ...

    def stats(self) -> StoreStats: ...

    def clear(self, model: str | None = None) -> int: ...

    def get_load(self, key: str) -> bytes | None: ...

    def put_load(self, key: str, value: bytes, model: str) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class StoreSpec:
    """How another process (a Ray actor, a bench child) opens the same store: ``spec`` as
    :func:`open_store` takes it (a SQLite file by its absolute path, a server by its URL, password and
    all: this is never shown) and the bound in bytes. Picklable and JSON-able (``StoreSpec(**fields)``)."""

    spec: str
    max_bytes: int

    @classmethod
    def of(cls, store: CacheStore) -> StoreSpec:
        path = getattr(store, "path", None)
        spec = str(Path(path).resolve()) if path is not None else str(getattr(store, "spec", store.where))
        return cls(spec, store.max_bytes)

    def open(self) -> CacheStore:
        return open_store(self.spec, self.max_bytes)


def default_path() -> Path:
    from .hub import own_cache

    return own_cache() / "scores.sqlite"


def open_store(
    spec: str, max_bytes: int | str | None = None, *, busy_timeout: float = BUSY_TIMEOUT
) -> CacheStore:
    """The store ``spec`` names: ``default`` (the SQLite file in bge-rerank's cache folder), a file path,
    or a ``redis://`` / ``rediss://`` / ``valkey://`` URL. Opening does not touch the store yet: a store
    that cannot be reached or read is found out at first use, and warned about there. ``max_bytes``: the
    bound, as bytes or as :func:`parse_size` reads it (``500MB``); default 1 GiB. ``busy_timeout``: how
    long a SQLite call waits for another process's write (a server's calls have timeouts of their own)."""
    spec = str(spec).strip()
    if not spec:
        raise UsageError("--score-cache: give default, a file path or a redis:// URL.")
    size = (
        DEFAULT_MAX_SIZE
        if max_bytes is None
        else parse_size(max_bytes)
        if isinstance(max_bytes, str)
        else max_bytes
    )
    if re.match(r"^(redis|rediss|valkey|valkeys|unix)://", spec):
        from .score_cache_redis import RedisStore

        return RedisStore(spec, size)
    if "://" in spec:
        raise UsageError(f"--score-cache {spec}: not a file path, and only redis:// or valkey:// URLs work.")
    path = default_path() if spec == DEFAULT else Path(spec).expanduser()
    return SqliteStore(path, size, busy_timeout=busy_timeout)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction; rolled back on error (unless SQLite already did, e.g. on a full disk)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class SqliteStore:
    """Entries in one SQLite file: WAL mode, a busy timeout for several writers, LRU by last use."""

    def __init__(self, path: Path, max_bytes: int, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.where = str(path)
        self.max_bytes = max_bytes
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, shared by a server's threads
        self._bytes: int | None = None  # this store's running estimate of the entries' size

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(
                    """
                    CREATE TABLE IF NOT EXISTS scores (
                        key BLOB PRIMARY KEY, value BLOB NOT NULL, model TEXT NOT NULL,
                        used INTEGER NOT NULL, size INTEGER NOT NULL) WITHOUT ROWID;
                    CREATE INDEX IF NOT EXISTS scores_used ON scores (used);
                    CREATE INDEX IF NOT EXISTS scores_model ON scores (model);
                    CREATE TABLE IF NOT EXISTS lookups (
                        model TEXT PRIMARY KEY, hits INTEGER NOT NULL, misses INTEGER NOT NULL);
                    CREATE TABLE IF NOT EXISTS loads (
                        key TEXT PRIMARY KEY, value BLOB NOT NULL, model TEXT NOT NULL);
                    """
                )
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        if not keys:
            return found
        with self._lock:
            db = self._conn()
            for start in range(0, len(keys), 500):
                part = keys[start : start + 500]
                marks = ",".join("?" * len(part))
                found.update(
                    db.execute(
                        f"SELECT key, CAST(value AS BLOB) FROM scores WHERE key IN ({marks})", part
                    ).fetchall()
                )
            if found:  # one write transaction for the whole lookup's last-use times
                now, known = time.time_ns(), list(found)
                with _transaction(db):
                    for start in range(0, len(known), 500):
                        part = known[start : start + 500]
                        marks = ",".join("?" * len(part))
                        db.execute(f"UPDATE scores SET used = ? WHERE key IN ({marks})", [now, *part])
        return found

    def put_many(self, entries: Sequence[tuple[bytes, bytes]], model: str) -> None:
        if not entries:
            return
        now = time.time_ns()
        rows = [(k, v, model, now, len(k) + len(v) + len(model) + ENTRY_OVERHEAD) for k, v in entries]
        with self._lock:
            db = self._conn()
            with _transaction(db):
                before = db.total_changes
                # A stored value that differs (damaged: it failed its checksum) is replaced.
                db.executemany(
                    "INSERT INTO scores VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                    "value = excluded.value, used = excluded.used WHERE scores.value IS NOT excluded.value",
                    rows,
                )
                added = db.total_changes - before
            if self._bytes is None:
                self._bytes = self._total(db)
            else:
                self._bytes += added * (sum(r[4] for r in rows) // len(rows))
            if self._bytes > self.max_bytes:
                self._evict(db)

    def _total(self, db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT COALESCE(SUM(size), 0) FROM scores").fetchone()[0])

    def _evict(self, db: sqlite3.Connection) -> None:
        """Delete the least recently used entries down to 90% of the bound (other writers' entries
        counted: the sum is read from the file)."""
        target = int(self.max_bytes * 0.9)
        while True:
            count, total = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM scores").fetchone()
            if total <= target or not count:
                break
            drop = max(1, math.ceil((total - target) / (total / count)))
            db.execute(
                "DELETE FROM scores WHERE key IN (SELECT key FROM scores ORDER BY used LIMIT ?)", (drop,)
            )
        self._bytes = int(total)

    def count(self, model: str, hits: int, misses: int) -> None:
        if not hits and not misses:
            return
        with self._lock:
            self._conn().execute(
                "INSERT INTO lookups VALUES (?, ?, ?) ON CONFLICT(model) DO UPDATE SET "
                "hits = hits + excluded.hits, misses = misses + excluded.misses",
                (model, hits, misses),
            )

    def stats(self) -> StoreStats:
        with self._lock:
            db = self._conn()
            per = {
                m: [n, b]
                for m, n, b in db.execute("SELECT model, COUNT(*), SUM(size) FROM scores GROUP BY model")
            }
            asked = {m: (h, s) for m, h, s in db.execute("SELECT model, hits, misses FROM lookups")}
        models = {
            name: ModelStats(
                per.get(name, [0, 0])[0], per.get(name, [0, 0])[1] or 0, *asked.get(name, (0, 0))
            )
            for name in {*per, *asked}
        }
        file_bytes = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return StoreStats(
            self.where,
            sum(m.entries for m in models.values()),
            sum(m.bytes for m in models.values()),
            self.max_bytes,
            file_bytes,
            models,
        )

    def clear(self, model: str | None = None) -> int:
        with self._lock:
            db = self._conn()
            if model is None:
                (count,) = db.execute("SELECT COUNT(*) FROM scores").fetchone()
                for table in ("scores", "lookups", "loads"):
                    db.execute(f"DELETE FROM {table}")
            else:
                count = db.execute("DELETE FROM scores WHERE model = ?", (model,)).rowcount
                for table in ("lookups", "loads"):
                    db.execute(f"DELETE FROM {table} WHERE model = ?", (model,))
            self._bytes = None
        return int(count)

    def get_load(self, key: str) -> bytes | None:
        """The record of how a configuration loaded (see ``jobs.settings.load_through_cache``), if kept."""
        with self._lock:
            row = (
                self._conn().execute("SELECT CAST(value AS BLOB) FROM loads WHERE key = ?", (key,)).fetchone()
            )
        return None if row is None else bytes(row[0])

    def put_load(self, key: str, value: bytes, model: str) -> None:
        with self._lock:
            self._conn().execute("INSERT OR REPLACE INTO loads VALUES (?, ?, ?)", (key, value, model))

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


# --- keys and values ------------------------------------------------------------------------------------


def namespace(settings: Mapping[str, Any]) -> bytes:
    """One digest of the settings a record depends on, as :func:`bge_rerank_cli.jobs.settings.bind_cache`
    gathers them (model files, backend, ..., the long-passage options)."""
    keyed = {"format": FORMAT, **settings}
    return hashlib.sha256(orjson.dumps(keyed, option=orjson.OPT_SORT_KEYS)).digest()


def pair_key(space: bytes, pair: Pair) -> bytes:
    query, passage = (
        pair.query.encode("utf-8", "surrogatepass"),
        pair.passage.encode("utf-8", "surrogatepass"),
    )
    digest = hashlib.sha256(space)
    digest.update(struct.pack(">QQ", len(query), len(passage)))
    digest.update(query)
    digest.update(passage)
    return digest.digest()


CHECK = 8  # bytes of a value's checksum: a flipped bit in a stored value is a miss, not a wrong score


def _check(key: bytes, payload: bytes) -> bytes:
    return hashlib.blake2b(key + payload, digest_size=CHECK).digest()


def encode_value(key: bytes, scored: Scored) -> bytes:
    """A record's scoring part as JSON (floats round-trip exactly), after a checksum of key and JSON."""
    chunk = scored.best_chunk
    payload = orjson.dumps(
        [
            scored.logit,
            scored.truncated,
            scored.dropped_tokens,
            scored.query_dropped_tokens,
            None if chunk is None else [chunk.index, chunk.start, chunk.end, chunk.count],
        ]
    )
    return _check(key, payload) + payload


def decode_value(key: bytes, raw: bytes) -> Scored | None:
    """The stored record, or ``None`` for anything malformed or not matching its checksum (then it is a
    miss: scored again, never a wrong score)."""
    payload = bytes(raw[CHECK:])
    if len(raw) <= CHECK or _check(key, payload) != bytes(raw[:CHECK]):
        return None
    try:
        logit, truncated, dropped, query_dropped, chunk = orjson.loads(payload)
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None
    if (
        not isinstance(logit, float)
        or not math.isfinite(logit)
        or not isinstance(truncated, bool)
        or type(dropped) is not int
        or type(query_dropped) is not int
    ):
        return None
    if chunk is not None:
        if not (isinstance(chunk, list) and len(chunk) == 4 and all(type(c) is int for c in chunk)):
            return None
        chunk = Chunk(*chunk)
    return Scored(logit, truncated, dropped, query_dropped, chunk)


class _Health:
    """Whether a store works, shared by the caches bound to it: its first failure is warned about once,
    and all of them go uncached together. With ``retry_after`` (a server's long life), the store is tried
    again that many seconds after it failed, one call at a time; when it answers, it is back, said once."""

    def __init__(self, retry_after: float | None = None) -> None:
        self.failed: str | None = None
        self.retry_after = retry_after
        self.lock = threading.Lock()
        self._next_try = 0.0

    def usable(self) -> bool:
        """Whether to call the store now: it works, or its next try is due (claimed by this caller)."""
        if self.failed is None:
            return True
        if self.retry_after is None:
            return False
        with self.lock:
            now = time.monotonic()
            if self.failed is None or now < self._next_try:
                return self.failed is None
            self._next_try = now + self.retry_after
            return True

    def fail(self, exc: BaseException, where: str) -> None:
        with self.lock:
            self._next_try = time.monotonic() + (self.retry_after or 0.0)
            if self.failed is None:
                self.failed = f"{type(exc).__name__}: {exc}"
                again = f" (tried again every {self.retry_after:g} s)" if self.retry_after else ""
                log.warning(
                    "score cache %s is unusable (%s); going on without it%s: every pair is scored by the model.",
                    where,
                    self.failed,
                    again,
                )

    def works(self, where: str) -> None:
        """A call succeeded: a store that had failed is back."""
        if self.failed is None:
            return
        with self.lock:
            if self.failed is not None:
                self.failed = None
                log.warning("score cache %s works again; pairs are looked up and remembered again.", where)


class PairCache:
    """A store bound to one scorer's settings: what the engine asks before scoring pairs and tells after.

    Counts this run's hits and misses. The first failure of the store is warned about once (on stderr
    through logging), and the cache then stays off for the rest of the run (scores come from the model),
    or, with ``retry_after`` seconds, until the store answers a later try.
    """

    def __init__(
        self,
        store: CacheStore,
        space: bytes,
        model: str,
        health: _Health | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        self.store, self.space, self.model = store, space, model
        self.hits = 0
        self.misses = 0
        self._health = health or _Health(retry_after)
        self._lock = threading.Lock()

    @property
    def failed(self) -> str | None:
        """Why the store failed (then the cache is off), or ``None`` while it works."""
        return self._health.failed

    def derived(self, setting: bytes) -> PairCache:
        """This cache for pairs scored with one more ``setting`` (e.g. a request's own token cut): keyed
        apart, sharing the store and its health (one warning, off together)."""
        return PairCache(self.store, hashlib.sha256(self.space + setting).digest(), self.model, self._health)

    def _failure(self, exc: BaseException) -> None:
        self._health.fail(exc, self.store.where)

    def lookup(self, pairs: Sequence[Pair]) -> list[Scored | None]:
        if not pairs or not self._health.usable():
            return [None] * len(pairs)
        keys = [pair_key(self.space, p) for p in pairs]
        try:
            found = self.store.get_many(keys)
        except Exception as exc:  # a corrupt file, a server gone: uncached from here on
            self._failure(exc)
            return [None] * len(pairs)
        self._health.works(self.store.where)
        results = [decode_value(k, found[k]) if k in found else None for k in keys]
        hits = sum(r is not None for r in results)
        with self._lock:
            self.hits += hits
            self.misses += len(pairs) - hits
        self._count(hits, len(pairs) - hits)
        return results

    def remember(self, pairs: Sequence[Pair], scored: Sequence[Scored]) -> None:
        if not pairs or self.failed is not None:  # a store being tried again is tried by lookups
            return
        keys = [pair_key(self.space, p) for p in pairs]
        entries = [(k, encode_value(k, s)) for k, s in zip(keys, scored, strict=True)]
        try:
            self.store.put_many(entries, self.model)
        except Exception as exc:
            self._failure(exc)

    def _count(self, hits: int, misses: int) -> None:
        try:
            self.store.count(self.model, hits, misses)
        except Exception as exc:
            self._failure(exc)
