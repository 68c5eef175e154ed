"""The score cache in the service (``serve --score-cache``): a :class:`~bge_rerank_cli.score_cache.PairCache`
bound to the loaded scorer and the service's score options, asked before a request's pairs are admitted
and tokenised, and told what the model scored for them.

Both calls are blocking I/O (SQLite, Redis), run in the cache's own thread, never on the event loop and
never in the pool that tokenises: a slow or hanging store delays lookups, not the model's work. That one
thread runs calls in the order they are made, so what was remembered for an answer is found by any
request made after it, although it is written after the answer is sent. A store that fails is warned about
once (one log line, by :class:`PairCache`), counted for the metrics, and the service goes on uncached. No
web framework here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from ..records import Pair, Scored
from ..score_cache import PairCache

log = logging.getLogger(__name__)


class CacheObserver(Protocol):
    """What the service's cache reports, for metrics: each lookup's hits and misses (distinct pairs), and
    the store's state (working, or failed and off)."""

    def cache_lookup(self, model: str, hits: int, misses: int) -> None: ...

    def cache_state(self, model: str, working: bool) -> None: ...


class ServiceCache:
    """The service's score cache: :meth:`lookup` and :meth:`remember` (blocking), or from the event loop
    :meth:`lookup_async` and :meth:`remember_later` (in the cache's own thread), counted in ``observer``;
    ``where`` without secrets, ``working`` until the store fails."""

    def __init__(
        self, cache: PairCache, observer: CacheObserver | None = None, *, label: str | None = None
    ) -> None:
        self.cache = cache
        self.model = label or cache.model  # the metrics' model label: the name the model is served under
        self.where = cache.store.where  # without secrets: stores show no password
        self.observer = observer
        self._lock = threading.Lock()
        self._reported = True  # the state last reported: working
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="score-cache")  # calls run in order
        if observer is not None:
            observer.cache_state(self.model, True)

    @property
    def working(self) -> bool:
        return self.cache.failed is None

    def _for(self, doc_tokens: int | None) -> PairCache:
        return self.cache if doc_tokens is None else self.cache.derived(b"max_tokens_per_doc=%d" % doc_tokens)

    def lookup(self, pairs: Sequence[Pair], doc_tokens: int | None = None) -> list[Scored | None]:
        """The records the store holds for ``pairs`` (distinct), ``None`` for the rest (all of them while
        the store is failing; it is tried again after a while)."""
        if not pairs:
            return []
        known = self._for(doc_tokens).lookup(pairs)
        if self._check() and self.observer is not None:
            hits = sum(k is not None for k in known)
            self.observer.cache_lookup(self.model, hits, len(pairs) - hits)
        return known

    def remember(
        self, pairs: Sequence[Pair], scored: Sequence[Scored], doc_tokens: int | None = None
    ) -> None:
        if self.working and pairs:
            self._for(doc_tokens).remember(pairs, scored)
            self._check()

    async def lookup_async(self, pairs: Sequence[Pair], doc_tokens: int | None = None) -> list[Scored | None]:
        """:meth:`lookup` in the cache's thread, after every call made before it."""
        return await asyncio.wrap_future(self._thread.submit(self.lookup, pairs, doc_tokens))

    def remember_later(
        self, pairs: Sequence[Pair], scored: Sequence[Scored], doc_tokens: int | None = None
    ) -> Future[None]:
        """:meth:`remember` in the cache's thread, not waited for: an answer never waits on the store, and
        a lookup made after this call (the same client asking again) still finds what it remembers."""
        future = self._thread.submit(self.remember, pairs, scored, doc_tokens)
        future.add_done_callback(_log_failure)
        return future

    def _check(self) -> bool:
        """Whether the store works now; each change (failed, back) is reported to the observer once."""
        working = self.working
        with self._lock:
            changed, self._reported = self._reported != working, working
        if changed and self.observer is not None:
            self.observer.cache_state(self.model, working)
        return working

    def describe(self) -> dict[str, object]:
        return {"where": self.where, "working": self.working}

    def close(self) -> None:
        """Finish what is to be remembered (each call bounded by the store's timeouts), then close."""
        self._thread.shutdown(wait=True)
        with contextlib.suppress(Exception):  # a store that failed may fail to close too; nothing is lost
            self.cache.store.close()


def _log_failure(future: Future[None]) -> None:
    """A remember that raised past :class:`PairCache` (which turns store failures into one warning): a
    bug, logged rather than lost with its never-awaited future."""
    exc = None if future.cancelled() else future.exception()
    if exc is not None:
        log.error("score cache: remembering scores failed: %s: %s", type(exc).__name__, exc)
