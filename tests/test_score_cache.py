"""The score cache: the same records with it and without it, a changed setting never meeting an old entry,
only misses scored, bounded by LRU, and a broken store never giving a wrong score or stopping the job."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bge_rerank_cli import Reranker
from bge_rerank_cli.config import ScoreOptions
from bge_rerank_cli.engine import JobControl, score_pairs
from bge_rerank_cli.records import Pair, Scored
from bge_rerank_cli.score_cache import (
    PairCache,
    SqliteStore,
    decode_value,
    encode_value,
    open_store,
    pair_key,
    parse_size,
)
from tests.conftest import REPO, SAMPLES, run_cli

PAIRS = [("what is deep learning?", "Deep learning trains neural networks."),
         ("what is deep learning?", "Apples are fruit."),
         ("如何读取JSON文件?", "json.load(f) 读取JSON文件"),
         ("a long one", " ".join(["word"] * 300))]  # fmt: skip


def _flags(pairs) -> list[str]:
    return [flag for pair in pairs for flag in pair]


def _score_args(model: Path, cache: Path) -> list[str]:
    """`bge-rerank score` of the sample pairs through ``cache``, as JSONL."""
    return [
        "score",
        str(SAMPLES / "pairs.jsonl"),
        "-m",
        str(model),
        "-f",
        "jsonl",
        "--score-cache",
        str(cache),
    ]


def _score(model: Path, cache: Path, **options) -> tuple[list, tuple[int, int]]:
    reranker = Reranker(str(model), device="cpu", score_cache=str(cache), **options)
    scored = reranker.score_pairs(PAIRS)
    return scored, reranker.cache_stats


def test_cached_and_uncached_runs_write_identical_records(tiny_xlmr: Path, tmp_path: Path):
    """Off, cold and warm give the same bytes. (A run with some pairs known batches only the others, and
    a batch's padding moves fp32 logits by rounding, as --batch-size does: see the partial-hit test.)"""
    for command in (["score", str(SAMPLES / "pairs.jsonl")], ["rerank", str(SAMPLES / "rerank.jsonl")]):
        cache = tmp_path / f"{command[0]}.sqlite"
        base = [*command, "-m", str(tiny_xlmr), "-f", "jsonl"]
        off = run_cli(base)
        cold = run_cli([*base, "--score-cache", str(cache)])
        warm = run_cli([*base, "--score-cache", str(cache)])
        assert off.returncode == cold.returncode == warm.returncode == 0, warm.stderr.decode()
        assert off.stdout == cold.stdout == warm.stdout and off.stdout
        assert b"score cache: 0 of" in cold.stderr and b"(100%)" in warm.stderr, warm.stderr.decode()
        assert b"not loaded" not in cold.stderr and b"(the model was not loaded)" in warm.stderr


def test_the_env_var_and_default_name_the_cache(tiny_xlmr: Path, tmp_path: Path):
    env = {"BGE_RERANK_CACHE": str(tmp_path / "own"), "BGE_RERANK_SCORE_CACHE": "default"}
    for _ in range(2):
        result = run_cli(
            ["score", str(SAMPLES / "pairs.jsonl"), "-m", str(tiny_xlmr), "-f", "jsonl"], env=env
        )
        assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "own" / "scores.sqlite").is_file() and b"(100%)" in result.stderr


@pytest.mark.parametrize(
    "changed",
    [
        {"max_length": 64},
        {"dtype": "bf16"},
        {"backend": "onnx"},
        {"backend": "onnx", "quantize": "int8"},
        {"long_docs": "chunk"},
        {"long_docs": "chunk", "chunk_overlap": 8},
        {"long_docs": "chunk", "max_chunks": 2},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_a_changed_setting_never_hits_an_old_entry(changed, tiny_xlmr: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("BGE_RERANK_CACHE", str(tmp_path / "own"))  # ONNX exports go here
    cache = tmp_path / "scores.sqlite"
    base = {"long_docs": "chunk"} if "chunk_overlap" in changed or "max_chunks" in changed else {}
    _, (hits, misses) = _score(tiny_xlmr, cache, **base)
    assert (hits, misses) == (0, len(PAIRS))
    _, (hits, _) = _score(tiny_xlmr, cache, **base)
    assert hits == len(PAIRS)  # the same settings: every pair known
    _, (hits, misses) = _score(tiny_xlmr, cache, **{**base, **changed})
    assert (hits, misses) == (0, len(PAIRS)), changed


def test_other_model_files_and_decoder_settings_are_keyed(tiny_xlmr: Path, tiny_qwen3: Path, tmp_path: Path):
    cache = tmp_path / "scores.sqlite"
    _score(tiny_xlmr, cache)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_xlmr, copy)
    assert _score(copy, cache)[1][0] == len(PAIRS)  # a byte-identical copy elsewhere: the same model
    from tools.random_model import build_xlmr

    other = build_xlmr(tmp_path / "other", seed=1)  # same config, other weights
    assert _score(other, cache)[1] == (0, len(PAIRS))
    _score(tiny_qwen3, cache)
    assert _score(tiny_qwen3, cache)[1][0] == len(PAIRS)
    assert _score(tiny_qwen3, cache, instruction="Judge relevance.")[1] == (0, len(PAIRS))


def test_settings_that_change_no_record_still_hit(tiny_xlmr: Path, tmp_path: Path):
    cache = tmp_path / "scores.sqlite"
    cold, _ = _score(tiny_xlmr, cache)
    warm, (hits, _) = _score(tiny_xlmr, cache, batch_size=2)
    assert hits == len(PAIRS) and warm == cold


def test_a_partial_hit_scores_only_the_misses(tiny_xlmr: Path, tmp_path: Path):
    reranker = Reranker(str(tiny_xlmr), device="cpu", score_cache=str(tmp_path / "c.sqlite"))
    known = [Pair(q, p) for q, p in PAIRS[:2]]
    reranker.score_pairs(known)
    control = JobControl(cache=reranker._control().cache)
    fresh = [Pair("new query", "new passage"), Pair("another", "one")]
    scored = score_pairs(reranker.scorer, [*known, *fresh, known[0]], options=ScoreOptions(), control=control)
    assert control.stats.cache_hits == 2 and control.stats.cache_misses == 2
    assert control.stats.sequences == 2  # only the two misses went through the model
    uncached = Reranker(str(tiny_xlmr), device="cpu").score_pairs([*known, *fresh])
    assert [s.logit for s in scored[:4]] == pytest.approx([s.logit for s in uncached], abs=1e-5)


def test_values_round_trip_and_a_flipped_bit_is_a_miss():
    key = pair_key(b"space", Pair("q", "p"))
    from bge_rerank_cli.records import Chunk

    for scored in (Scored(0.1 + 0.2, False, 0, 0), Scored(-3.25e-7, True, 17, 2, Chunk(3, 10, 90, 5))):
        raw = encode_value(key, scored)
        assert decode_value(key, raw) == scored
        flipped = bytearray(raw)
        flipped[-3] ^= 0x01
        assert decode_value(key, bytes(flipped)) is None
        assert decode_value(pair_key(b"space", Pair("q", "other")), raw) is None  # an entry under another key


def test_a_corrupted_value_in_the_file_is_scored_again(tiny_xlmr: Path, tmp_path: Path):
    cache = tmp_path / "scores.sqlite"
    cold, _ = _score(tiny_xlmr, cache)
    db = sqlite3.connect(cache)
    for key, value in db.execute("SELECT key, value FROM scores").fetchall():
        changed = bytearray(value)
        changed[10] ^= 0x04  # one bit of the stored logit's digits
        db.execute("UPDATE scores SET value = ? WHERE key = ?", (bytes(changed), key))
    db.commit()
    db.close()
    warm, (hits, misses) = _score(tiny_xlmr, cache)
    assert (hits, misses) == (0, len(PAIRS)) and warm == cold
    again, (hits, _) = _score(tiny_xlmr, cache)  # the damaged values were replaced by the rescored ones
    assert hits == len(PAIRS) and again == cold


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_broken_cache_file_warns_once_and_the_job_runs_uncached(damage, tiny_xlmr: Path, tmp_path: Path):
    cache = tmp_path / "scores.sqlite"
    args = ["score", str(SAMPLES / "pairs.jsonl"), "-m", str(tiny_xlmr), "-f", "jsonl"]
    good = run_cli([*args, "--score-cache", str(cache)])
    filler = PairCache(SqliteStore(cache, parse_size("1GB")), b"filler", "filler")
    filler.remember([Pair("q", f"passage {i}") for i in range(3000)], [Scored(0.5)] * 3000)  # many pages
    filler.store.close()
    sqlite3.connect(cache).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"not a database " * 500)
    for suffix in ("-wal", "-shm"):
        Path(str(cache) + suffix).unlink(missing_ok=True)
    broken = run_cli([*args, "--score-cache", str(cache)])
    assert broken.returncode == 0, broken.stderr.decode()
    assert broken.stdout == good.stdout
    stderr = broken.stderr.decode()
    assert stderr.count("score cache") >= 1 and stderr.count("is unusable") == 1, stderr
    assert "score cache off after it failed" in stderr and "pairs known" not in stderr  # no "0 of 10 known"


def test_lru_keeps_the_store_within_its_bound(tmp_path: Path):
    store = SqliteStore(tmp_path / "s.sqlite", max_bytes=parse_size("64KiB"))
    cache = PairCache(store, b"space", "m")
    first = [Pair("q", f"kept {i}") for i in range(20)]
    cache.remember(first, [Scored(float(i)) for i in range(20)])
    for batch in range(20):
        cache.lookup(first)  # used again and again: the most recent
        pairs = [Pair("q", f"filler {batch} {i}") for i in range(100)]
        cache.remember(pairs, [Scored(0.5)] * len(pairs))
    stats = store.stats()
    assert stats.bytes <= store.max_bytes and stats.entries < 20 * 100
    assert all(hit is not None for hit in cache.lookup(first))  # recently used entries survive
    assert cache.lookup([Pair("q", "filler 0 0")]) == [None]  # the oldest went first


def test_stats_and_clear_per_model(tmp_path: Path):
    store = SqliteStore(tmp_path / "s.sqlite", max_bytes=parse_size("10MB"))
    a, b = PairCache(store, b"a", "model-a"), PairCache(store, b"b", "model-b")
    a.remember([Pair("q", "p")], [Scored(1.0)])
    b.remember([Pair("q", "p"), Pair("q", "r")], [Scored(1.0), Scored(2.0)])
    a.lookup([Pair("q", "p"), Pair("q", "x")])
    stats = store.stats()
    assert stats.entries == 3 and stats.models["model-a"].hits == 1 and stats.models["model-a"].misses == 1
    store.put_load("load-a", b"{}", "model-a")
    store.put_load("load-b", b"{}", "model-b")
    assert store.clear("model-b") == 2 and store.stats().entries == 1
    assert store.get_load("load-b") is None and store.get_load("load-a") == b"{}"  # load records go too
    assert store.clear() == 1 and store.stats().entries == 0 and store.get_load("load-a") is None


def test_several_processes_write_one_file_at_once(tiny_xlmr: Path, tmp_path: Path):
    cache = tmp_path / "scores.sqlite"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    jobs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bge_rerank_cli",
                "score",
                "-q",
                f"query {n}",
                *_flags(["-p", f"passage {n} {j}"] for j in range(200)),
                "-m",
                str(tiny_xlmr),
                "-f",
                "jsonl",
                "--score-cache",
                str(cache),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(3)
    ]
    for job in jobs:
        out, err = job.communicate(timeout=180)
        assert job.returncode == 0 and b"is unusable" not in err, err.decode()
        assert len(out.splitlines()) == 200
    assert SqliteStore(cache, parse_size("1GB")).stats().entries == 600


def test_bad_sizes_and_stores_are_refused(tiny_xlmr: Path):
    for size in ("lots", "12XB", "1KB"):
        with pytest.raises(ValueError):
            parse_size(size)
    with pytest.raises(ValueError):
        open_store("http://example.com/cache")
    result = run_cli(["score", "-q", "q", "-p", "p", "-m", str(tiny_xlmr), "--score-cache", "x.sqlite",
                      "--score-cache-max-size", "lots"])  # fmt: skip
    assert result.returncode == 2 and b"score cache size 'lots'" in result.stderr


def test_the_score_cache_command_reports_and_clears(tiny_xlmr: Path, tmp_path: Path):
    cache = tmp_path / "scores.sqlite"
    missing = run_cli(["score-cache", "stats", "--score-cache", str(cache), "-f", "json"])
    assert missing.returncode == 0 and orjson.loads(missing.stdout)["entries"] == 0 and not cache.exists()
    for _ in range(2):
        run_cli(_score_args(tiny_xlmr, cache))
    report = orjson.loads(run_cli(["score-cache", "stats", "--score-cache", str(cache), "-f", "json"]).stdout)
    model = report["models"][str(tiny_xlmr)]
    assert report["entries"] == model["entries"] == 10 and (model["hits"], model["misses"]) == (10, 10)
    assert report["hit_rate"] == 0.5 and report["file_bytes"] > 0
    other = run_cli(["score-cache", "clear", "--score-cache", str(cache), "--model", "some/other-model"])
    assert other.returncode == 0 and b"removed 0 entries" in other.stderr
    cleared = run_cli(["score-cache", "clear", "--score-cache", str(cache), "-m", str(tiny_xlmr)])
    assert cleared.returncode == 0 and b"removed 10 entries" in cleared.stderr
    assert (
        orjson.loads(run_cli(["score-cache", "stats", "--score-cache", str(cache), "-f", "json"]).stdout)[
            "entries"
        ]
        == 0
    )
    cache.write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(str(cache) + suffix).unlink(missing_ok=True)
    broken = run_cli(["score-cache", "stats", "--score-cache", str(cache)])
    assert broken.returncode == 2 and b"cannot read it" in broken.stderr and b"Traceback" not in broken.stderr


def test_the_api_keys_each_call_by_its_current_options(tiny_xlmr: Path, tmp_path: Path):
    """``Reranker.options`` may be changed between calls: a call never meets entries of other options."""
    with Reranker(
        str(tiny_xlmr), device="cpu", score_cache=str(tmp_path / "c.sqlite"), max_length=64
    ) as reranker:
        truncated = reranker.score_pairs(PAIRS)
        reranker.options = ScoreOptions("chunk")
        chunked = reranker.score_pairs(PAIRS)
        assert truncated[3].truncated and truncated[3].best_chunk is None
        assert chunked[3].best_chunk is not None and chunked[3].best_chunk.count > 1
        assert reranker.cache_stats == (0, len(PAIRS))  # the chunk-mode binding: nothing known yet
        reranker.options = ScoreOptions()
        assert reranker.score_pairs(PAIRS) == truncated and reranker.cache_stats == (len(PAIRS), 0)


# --- a job whose pairs are all known never loads the model ----------------------------------------------


def _job_run(model: Path, source: Path, out: Path, cache: Path, **config: object):
    """``bge-rerank score`` as the runner does it, with a loader that counts its calls."""
    from bge_rerank_cli.backends import load_scorer
    from bge_rerank_cli.config import LoaderConfig
    from bge_rerank_cli.jobs import Job, JsonlSource, Output, ScoreTask, run

    loader_config = LoaderConfig(model=str(model), device="cpu", **config)  # type: ignore[arg-type]
    loads: list[int] = []

    def load():  # type: ignore[no-untyped-def]
        loads.append(1)
        return load_scorer(loader_config)

    job = Job(
        JsonlSource(str(source)), ScoreTask(ScoreOptions()), Output(str(out), "jsonl", None), on_error="fail"
    )
    store = open_store(str(cache))
    try:
        report = run(job, load, config=loader_config, cache=store)
    finally:
        store.close()
    return report, len(loads)


def test_a_job_of_known_pairs_never_loads_the_model(tiny_xlmr: Path, tmp_path: Path):
    """The cache records how a configuration loaded; a job whose pairs are all known runs on that record
    (same records, same checkpointed settings), and one with a new pair loads the model when it meets it."""
    source, cache = tmp_path / "in.jsonl", tmp_path / "c.sqlite"
    source.write_bytes((SAMPLES / "pairs.jsonl").read_bytes())
    cold, cold_loads = _job_run(tiny_xlmr, source, tmp_path / "cold.jsonl", cache)
    warm, warm_loads = _job_run(tiny_xlmr, source, tmp_path / "warm.jsonl", cache)
    assert (cold_loads, cold.model_loaded) == (1, True)
    assert (warm_loads, warm.model_loaded, warm.load_seconds) == (0, False, 0.0)
    assert (tmp_path / "warm.jsonl").read_bytes() == (tmp_path / "cold.jsonl").read_bytes()
    assert warm.scorer == cold.scorer and warm.max_length == cold.max_length
    assert warm.model_limit == cold.model_limit

    with source.open("ab") as handle:  # one new pair at the end: the model is loaded for it, once
        handle.write(orjson.dumps({"query": "a new query", "passage": "a new passage"}) + b"\n")
    more, more_loads = _job_run(tiny_xlmr, source, tmp_path / "more.jsonl", cache)
    assert (more_loads, more.model_loaded) == (1, True) and more.load_seconds > 0
    assert (more.stats.cache_hits, more.stats.cache_misses) == (warm.stats.cache_hits, 1)
    lines = (tmp_path / "more.jsonl").read_bytes().splitlines(keepends=True)
    assert b"".join(lines[:-1]) == (tmp_path / "cold.jsonl").read_bytes()

    # A loader setting that changes how the model loads has no record yet: loaded, then recorded.
    assert _job_run(tiny_xlmr, source, tmp_path / "b.jsonl", cache, batch_size=3)[1] == 1
    assert _job_run(tiny_xlmr, source, tmp_path / "b.jsonl", cache, batch_size=3)[1] == 0


def test_a_load_record_that_does_not_match_the_model_is_refused_and_replaced(tiny_xlmr: Path, tmp_path: Path):
    """A record saying other than what the model loads as (a store edited, or written by other code) is
    never scored under: the job stops with a clear error before writing a record keyed by it, the record is
    replaced, and the next run is right. An unreadable record is no record: the model is loaded."""
    cache = tmp_path / "c.sqlite"
    base = _score_args(tiny_xlmr, cache)
    cold = run_cli(base)
    assert cold.returncode == 0, cold.stderr.decode()
    db = sqlite3.connect(cache)
    ((key, raw),) = db.execute("SELECT key, value FROM loads").fetchall()
    facts = orjson.loads(raw)
    db.execute("UPDATE loads SET value = ? WHERE key = ?", (orjson.dumps({**facts, "dtype": "bf16"}), key))
    db.commit()
    refused = run_cli(base)
    assert refused.returncode != 0 and refused.stdout == b"", refused.stderr.decode()
    assert b"loaded with other settings (dtype)" in refused.stderr, refused.stderr.decode()
    assert orjson.loads(db.execute("SELECT value FROM loads").fetchone()[0]) == facts  # replaced
    again = run_cli(base)
    assert (
        again.returncode == 0
        and again.stdout == cold.stdout
        and b"(the model was not loaded)" in again.stderr
    )

    db.execute("UPDATE loads SET value = ?", (b"{not json",))
    db.commit()
    unreadable = run_cli(base)
    assert unreadable.returncode == 0 and unreadable.stdout == cold.stdout
    assert b"(100%)" in unreadable.stderr and b"not loaded" not in unreadable.stderr
    db.close()


def test_the_api_scores_known_pairs_without_loading_the_model(tiny_xlmr: Path, tmp_path: Path):
    from bge_rerank_cli.backends.recorded import RecordedScorer

    cache = str(tmp_path / "c.sqlite")
    cold = Reranker(str(tiny_xlmr), device="cpu", score_cache=cache)
    expected = cold.score_pairs(PAIRS)
    cold.close()
    with Reranker(str(tiny_xlmr), device="cpu", score_cache=cache) as warm:
        assert warm.score_pairs(PAIRS) == expected
        scorer = warm.scorer
        assert isinstance(scorer, RecordedScorer) and not scorer.loaded  # the record stood in for it
        assert scorer.describe() == cold.scorer.describe() and scorer.max_length == cold.scorer.max_length
        fresh = warm.score_pairs([("a new query", "a new passage")])  # a miss: the model loads now
        assert scorer.loaded and scorer.load_seconds > 0
    uncached = Reranker(str(tiny_xlmr), device="cpu").score_pairs([("a new query", "a new passage")])
    assert fresh[0].logit == pytest.approx(uncached[0].logit, abs=1e-5)


def test_an_onnx_export_without_its_model_files_is_keyed_by_the_export(
    tiny_xlmr: Path, tmp_path: Path, monkeypatch
):
    """The slim image runs an ONNX export whose model folder is not there: its entries are keyed by the
    export's files, so another model exported at the same path never meets them."""
    monkeypatch.setenv("BGE_RERANK_CACHE", str(tmp_path / "own"))
    from bge_rerank_cli.backends import load_scorer
    from tools.random_model import build_xlmr

    cache, model, away = tmp_path / "c.sqlite", tmp_path / "m", tmp_path / "away"

    def exported_then_gone(build) -> None:  # type: ignore[no-untyped-def]
        load_scorer.cache_clear()  # as a new process would: this one keeps what it loaded per setting
        shutil.rmtree(model, ignore_errors=True)
        shutil.rmtree(away, ignore_errors=True)
        build(model)
        Reranker(str(model), device="cpu", backend="onnx").score_pairs(PAIRS[:1])  # the export
        model.rename(away)

    exported_then_gone(lambda path: shutil.copytree(tiny_xlmr, path))
    first, (hits, misses) = _score(model, cache, backend="onnx")
    assert (hits, misses) == (0, len(PAIRS))
    again, (hits, _) = _score(model, cache, backend="onnx")
    assert hits == len(PAIRS) and again == first
    exported_then_gone(lambda path: build_xlmr(path, seed=1))  # other weights, the same path
    load_scorer.cache_clear()
    other, (hits, misses) = _score(model, cache, backend="onnx")
    assert (hits, misses) == (0, len(PAIRS)) and other != first


def test_a_model_folder_is_read_once_per_process_while_its_files_stay_the_same(
    tiny_xlmr: Path, tmp_path: Path
):
    """A job fingerprints its model several times (cache keys, checkpoint, ONNX check): the files are read
    once, and a file rewritten in place, same name and size, is read again and changes the fingerprint."""
    from bge_rerank_cli.hub import _fingerprint, folder_fingerprint

    model = tmp_path / "model"
    shutil.copytree(tiny_xlmr, model)
    first = folder_fingerprint(model)
    reads = _fingerprint.cache_info().misses
    assert folder_fingerprint(model) == first and _fingerprint.cache_info().misses == reads
    config = (model / "config.json").read_bytes()
    (model / "config.json").write_bytes(config.replace(b'"hidden_act"', b'"hidden_Act"'))  # same size
    assert folder_fingerprint(model) != first and _fingerprint.cache_info().misses == reads + 1
