"""The score cache on a Redis-protocol server (Redis or Valkey), shared by replicas, processes, Ray workers.

Layout, every key under ``bge-rerank:`` in the URL's database:

- ``score:<hex key>``: a string, ``<model id>:<value>`` (the value is opaque: :class:`PairCache` encodes
  and checksums it);
- ``lru:<model id>``: a sorted set per model of its entries' hex keys, scored by last use (server time, µs);
- ``models``: model name -> a small id (``next-id`` hands them out, and is never reset);
- ``hits`` / ``misses``: lookups per model name;
- ``loads`` / ``load-models``: how a configuration loaded (see ``jobs.settings.load_through_cache``) and the
  model it belongs to, by the configuration's key.

Every change is one Lua script, so it is atomic on the server however many processes write at once: a put
adds the values and their LRU entries together, a lookup reads and marks as used together, and eviction
removes the globally least recently used entries (merging the per-model sets) in chunks of
:data:`CHUNK`. Trade-offs: entries and bytes are counted from the sorted sets, and bytes are an estimate
(:data:`ENTRY_BYTES` per entry, measured on Valkey 9), not the server's memory; scripts build key names
themselves, so the store needs a single server (a primary with replicas is fine), not Redis Cluster; two
processes may both evict at once, each only down to the bound's 90%, so never more than that; last-use
times are the server's clock, the same for every client. Give the server no ``maxmemory`` eviction of its
own below ``--score-cache-max-size`` (an entry it dropped is a miss, never a wrong score, but it stays
counted until this store's eviction reaches it).

The connection is opened at first use with short timeouts and no retries: a server that is down or goes
away costs one failed call, which :class:`PairCache` turns into one warning before the job runs uncached.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from .errors import BgeRerankError, UsageError, option
from .score_cache_common import ModelStats, StoreStats, public_where

PREFIX = "bge-rerank:"
CONNECT_TIMEOUT = 2.0  # seconds: a dead server costs one warning, not a hang
TIMEOUT = 2.0  # seconds for one reply (a script works on at most CHUNK entries: milliseconds)
CHUNK = 1000  # entries per script call: keeps each call short, as the server runs one script at a time
ENTRY_BYTES = 320  # server memory per entry: the string key and value, its sorted-set member (Valkey 9)
INSTALL = "pip install 'bge-rerank-cli[cache]'"
_SCHEMES = {"valkey": "redis", "valkeys": "rediss"}

# A put: the model's id (made on first use), each entry stored unless there (a stored value whose
# payload differs, i.e. damaged, is replaced) and marked used now. Returns the entries held, all models.
_PUT = """
local function split(v)
  local s = v and string.find(v, ':', 1, true)
  if s and string.match(string.sub(v, 1, s - 1), '^%d+$') then return string.sub(v, 1, s - 1), string.sub(v, s + 1) end
  return nil, v
end
local p, model = ARGV[1], ARGV[2]
local id = redis.call('HGET', p .. 'models', model)
if not id then
  id = tostring(redis.call('INCR', p .. 'next-id'))
  redis.call('HSET', p .. 'models', model, id)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local lru = p .. 'lru:' .. id
for i = 3, #ARGV, 2 do
  local key, value = p .. 'score:' .. ARGV[i], id .. ':' .. ARGV[i + 1]
  if redis.call('SET', key, value, 'NX') then
    redis.call('ZADD', lru, now, ARGV[i])
  else
    local _, payload = split(redis.call('GET', key))
    if payload ~= ARGV[i + 1] then
      redis.call('SET', key, value)
      redis.call('ZADD', lru, now, ARGV[i])
    end
  end
end
local held = 0
for _, mid in ipairs(redis.call('HVALS', p .. 'models')) do
  held = held + redis.call('ZCARD', p .. 'lru:' .. mid)
end
return held
"""

# A lookup: the values found (false where none), each found entry marked used now.
_GET = """
local function split(v)
  local s = v and string.find(v, ':', 1, true)
  if s and string.match(string.sub(v, 1, s - 1), '^%d+$') then return string.sub(v, 1, s - 1), string.sub(v, s + 1) end
  return nil, v
end
local p = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local found = {}
for i = 2, #ARGV do
  local id, value = split(redis.call('GET', p .. 'score:' .. ARGV[i]))
  if id then redis.call('ZADD', p .. 'lru:' .. id, 'XX', now, ARGV[i]) end
  found[i - 1] = value
end
return found
"""

# Eviction: removes up to ARGV[3] of the least recently used entries (across every model's set) while
# more than ARGV[2] are held. Returns the entries still held.
_EVICT = """
local p, target, chunk = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('HVALS', p .. 'models')
local held = 0
for _, mid in ipairs(ids) do held = held + redis.call('ZCARD', p .. 'lru:' .. mid) end
local drop = math.min(held - target, chunk)
if drop <= 0 then return held end
local oldest = {}
for _, mid in ipairs(ids) do
  local r = redis.call('ZRANGE', p .. 'lru:' .. mid, 0, drop - 1, 'WITHSCORES')
  for i = 1, #r, 2 do oldest[#oldest + 1] = {tonumber(r[i + 1]), mid, r[i]} end
end
table.sort(oldest, function(a, b) return a[1] < b[1] end)
drop = math.min(drop, #oldest)
for i = 1, drop do
  redis.call('ZREM', p .. 'lru:' .. oldest[i][2], oldest[i][3])
  redis.call('DEL', p .. 'score:' .. oldest[i][3])
end
return held - drop
"""

# One model's entries, up to ARGV[3] of them; when none are left, its id and lookup counts go too.
# Returns {removed, left}.
_CLEAR = """
local p, model, chunk = ARGV[1], ARGV[2], tonumber(ARGV[3])
local id = redis.call('HGET', p .. 'models', model)
if not id then
  redis.call('HDEL', p .. 'hits', model)
  redis.call('HDEL', p .. 'misses', model)
  return {0, 0}
end
local lru = p .. 'lru:' .. id
local keys = redis.call('ZRANGE', lru, 0, chunk - 1)
for _, hex in ipairs(keys) do redis.call('DEL', p .. 'score:' .. hex) end
if #keys > 0 then redis.call('ZREM', lru, unpack(keys)) end
local left = redis.call('ZCARD', lru)
if left == 0 then
  redis.call('HDEL', p .. 'models', model)
  redis.call('HDEL', p .. 'hits', model)
  redis.call('HDEL', p .. 'misses', model)
end
return {#keys, left}
"""

# A consistent snapshot for stats(): {name, entries, ...}, hits, misses.
_STATS = """
local p = ARGV[1]
local held = {}
local models = redis.call('HGETALL', p .. 'models')
for i = 1, #models, 2 do
  held[#held + 1] = models[i]
  held[#held + 1] = redis.call('ZCARD', p .. 'lru:' .. models[i + 1])
end
return {held, redis.call('HGETALL', p .. 'hits'), redis.call('HGETALL', p .. 'misses')}
"""


class ScoreCacheError(BgeRerankError):
    """The cache server failed a call: unreachable, gone, refusing (read-only replica, auth, memory)."""


def redis_url(spec: str) -> str:
    """``spec`` as redis-py spells it: ``valkey://`` is ``redis://``, ``valkeys://`` is ``rediss://``."""
    scheme, sep, rest = spec.partition("://")
    return f"{_SCHEMES.get(scheme.lower(), scheme.lower())}{sep}{rest}"


class RedisStore:
    """The :class:`~bge_rerank_cli.score_cache.CacheStore` on a Redis or Valkey server (see the module).

    Opening checks the URL and that the ``redis`` client is installed, and connects to nothing; the first
    call connects. Thread-safe (redis-py's connection pool); picklable, so Ray workers can each reopen it.
    """

    def __init__(self, spec: str, max_bytes: int) -> None:
        self.spec = spec
        self.where = public_where(spec)
        self.max_bytes = max_bytes
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise UsageError(
                f"{option('score_cache')} {self.where} needs the redis client, which is not installed.",
                hint=f"Install it with: {INSTALL}",
            ) from None
        url = redis_url(spec)
        try:
            parts = urlsplit(url)
            if parts.scheme != "unix" and not re.fullmatch(r"/?\d*", parts.path):
                raise ValueError(f"the database {parts.path.lstrip('/')!r} is not a number")
            self._client: Any = redis.Redis.from_url(
                url,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=TIMEOUT,
                retry=Retry(NoBackoff(), 0),
                retry_on_timeout=False,
            )
        except (ValueError, TypeError) as exc:
            raise UsageError(
                f"{option('score_cache')} {self.where}: not a usable server URL ({exc}).",
                hint="Give redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://... for TLS, valkey://... "
                "or unix:///PATH/TO/SOCKET[?db=DB].",
            ) from None
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self._scripts: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        RedisStore.__init__(self, state["spec"], state["max_bytes"])

    def _run(self, name: str, args: Sequence[Any]) -> Any:
        """Script ``name`` (loaded on first use, by its hash after) with ``PREFIX`` and ``args``."""
        with self._lock:
            script = self._scripts.get(name)
            if script is None:
                script = self._scripts[name] = self._client.register_script(_SOURCES[name])
        with self._call():
            return script(args=[PREFIX, *args])

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        """Calls to the server: its errors (gone, refusing) become a :class:`ScoreCacheError`."""
        try:
            yield
        except self._errors as exc:
            raise self._failed(exc) from exc

    def _failed(self, exc: BaseException) -> ScoreCacheError:
        return ScoreCacheError(
            f"{type(exc).__name__} from the server: {str(exc).rstrip('.')}.",
            hint=f"Check that the server at {self.where} is running and that the URL (host, port, db, "
            "password) is right.",
        )

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        for start in range(0, len(keys), CHUNK):
            part = keys[start : start + CHUNK]
            values = self._run("get", [k.hex() for k in part])
            found.update((k, bytes(v)) for k, v in zip(part, values, strict=True) if v is not None)
        return found

    def put_many(self, entries: Sequence[tuple[bytes, bytes]], model: str) -> None:
        held = 0
        for start in range(0, len(entries), CHUNK):
            part = entries[start : start + CHUNK]
            held = int(self._run("put", [model, *(x for k, v in part for x in (k.hex(), v))]))
        if held * ENTRY_BYTES > self.max_bytes:
            self._evict(held)

    def _evict(self, held: int) -> None:
        """Drop the least recently used entries down to 90% of the bound (other writers' entries counted)."""
        target = int(self.max_bytes * 0.9) // ENTRY_BYTES
        while held > target:
            before, held = held, int(self._run("evict", [target, CHUNK]))
            if held >= before:  # another process evicted too, or wrote faster than this drops: enough
                break

    def count(self, model: str, hits: int, misses: int) -> None:
        if not hits and not misses:
            return
        with self._call(), self._client.pipeline(transaction=False) as pipe:
            pipe.hincrby(PREFIX + "hits", model, hits)
            pipe.hincrby(PREFIX + "misses", model, misses)
            pipe.execute()

    def stats(self) -> StoreStats:
        held, hits, misses = (_counts(flat) for flat in self._run("stats", []))
        models = {
            name: ModelStats(n := held.get(name, 0), n * ENTRY_BYTES, hits.get(name, 0), misses.get(name, 0))
            for name in {*held, *hits, *misses}
        }
        total = sum(held.values())
        return StoreStats(self.where, total, total * ENTRY_BYTES, self.max_bytes, None, models)

    def clear(self, model: str | None = None) -> int:
        if model is not None:
            return self._clear_model(model)
        with self._call():
            names = [_text(n) for n in self._client.hkeys(PREFIX + "models")]
        removed = sum(self._clear_model(name) for name in names)
        self._sweep()
        return removed

    def get_load(self, key: str) -> bytes | None:
        with self._call():
            value = self._client.hget(PREFIX + "loads", key)
        return None if value is None else bytes(value)

    def put_load(self, key: str, value: bytes, model: str) -> None:
        with self._call(), self._client.pipeline(transaction=True) as pipe:
            pipe.hset(PREFIX + "loads", key, value)
            pipe.hset(PREFIX + "load-models", key, model)
            pipe.execute()

    def _clear_model(self, model: str) -> int:
        with self._call():  # the model's load records (a few keys): gone with its entries
            keys = [k for k, m in self._client.hgetall(PREFIX + "load-models").items() if _text(m) == model]
            if keys:
                self._client.hdel(PREFIX + "loads", *keys)
                self._client.hdel(PREFIX + "load-models", *keys)
        removed = 0
        while True:
            gone, left = self._run("clear", [model, CHUNK])
            removed += int(gone)
            if not int(left) or not int(gone):
                return removed

    def _sweep(self) -> None:
        """After clearing every model: whatever else is under the prefix (strays of a model cleared while
        another process wrote, lookup counts), but ``next-id``, so that no id is ever handed out twice."""
        keep = (PREFIX + "next-id").encode()
        with self._call():
            batch: list[bytes] = []
            for key in self._client.scan_iter(match=PREFIX + "*", count=CHUNK):
                if key != keep:
                    batch.append(key)
                if len(batch) >= CHUNK:
                    self._client.delete(*batch)
                    batch.clear()
            if batch:
                self._client.delete(*batch)

    def close(self) -> None:
        with contextlib.suppress(*self._errors):  # a server gone: nothing to flush
            self._client.close()


_SOURCES = {"put": _PUT, "get": _GET, "evict": _EVICT, "clear": _CLEAR, "stats": _STATS}


def _counts(flat: Sequence[Any]) -> dict[str, int]:
    """``[name, n, name, n, ...]`` (a hash or the stats script's list) as ``{name: n}``."""
    return {_text(name): int(n) for name, n in zip(flat[::2], flat[1::2], strict=True)}


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
