"""`eval --score-cache` and `bench --score-cache`: a rerun costs nothing for the pairs already scored and
says so, with identical figures; bench measures each setup through the cache, first and again."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bge_rerank_cli.benchmark import CachePass, CacheRuns, Measurement
from tests.conftest import SAMPLES, run_cli

BEIR = SAMPLES / "beir-sample"


def eval_args(model: Path, cache: Path | None, *more: str) -> list[str]:
    args = ["eval", "--beir", str(BEIR), "--run", str(BEIR / "bm25.run"), "-m", str(model), *more]
    return [*args, "--score-cache", str(cache)] if cache is not None else args


def test_eval_twice_through_the_cache_gives_the_same_figures_the_second_time_all_known(
    tiny_xlmr: Path, tmp_path: Path
):
    cache = tmp_path / "scores.sqlite"
    runs = [run_cli(eval_args(tiny_xlmr, c, "-f", "json")) for c in (None, cache, cache)]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr.decode()
    off, cold, warm = (orjson.loads(r.stdout) for r in runs)
    assert "score_cache" not in off
    pairs = cold["score_cache"]["misses"]
    assert pairs > 0 and cold["score_cache"] == {
        "where": str(cache),
        "hits": 0,
        "misses": pairs,
        "hit_rate": 0.0,
        "model_loaded": True,
    }
    assert warm["score_cache"] == {"where": str(cache), "hits": pairs, "misses": 0, "hit_rate": 1.0,
                                   "model_loaded": False}  # fmt: skip
    assert warm["model"] == cold["model"]  # what scored it, from the cache's record of the load
    for key in ("measures", "top1_replacement_rate", "top1_replaced", "mean_abs_rank_shift", "queries"):
        assert off[key] == cold[key] == warm[key], key
    table = run_cli(eval_args(tiny_xlmr, cache, "-f", "table"))
    assert (
        table.returncode == 0
        and f"score cache {cache}: {pairs} of {pairs} distinct pairs known (100%) (the model was not loaded)"
        in (table.stdout.decode())
    )


def test_eval_with_a_reranked_run_asks_no_cache(tiny_xlmr: Path, tmp_path: Path):
    reranked = tmp_path / "reranked.run"
    reranked.write_bytes((BEIR / "bm25.run").read_bytes())
    result = run_cli(eval_args(tiny_xlmr, tmp_path / "c.sqlite", "--reranked", str(reranked), "-f", "json"))
    assert result.returncode == 0, result.stderr.decode()
    assert "score_cache" not in orjson.loads(result.stdout) and not (tmp_path / "c.sqlite").exists()


def bench(model: Path, *more: str, env: dict[str, str]) -> dict:
    args = [
        "bench",
        "-m",
        str(model),
        "--setups",
        "torch-fp32",
        "--limit",
        "3",
        "--no-ceilings",
        "-f",
        "json",
    ]
    result = run_cli([*args, *more], env=env)
    assert result.returncode == 0, result.stderr.decode()
    return orjson.loads(result.stdout)


def test_bench_measures_each_setup_through_the_cache_first_and_again(tiny_xlmr: Path, tmp_path: Path):
    env = {"BGE_RERANK_CACHE": str(tmp_path / "own")}
    plain = bench(tiny_xlmr, env=env)
    assert "score_cache" not in plain and "score_cache" not in plain["results"][0]  # the output as it was
    cache = tmp_path / "scores.sqlite"
    report = bench(tiny_xlmr, "--score-cache", str(cache), env=env)
    row = report["results"][0]
    distinct = row["score_cache"]["first"]["misses"]
    assert report["score_cache"] == str(cache) and 0 < distinct <= row["pairs"]
    assert row["score_cache"]["first"]["hits"] == 0
    assert row["score_cache"]["again"]["hits"] == distinct and row["score_cache"]["again"]["misses"] == 0
    assert row["score_cache"]["again"]["pairs_per_s"] > 0 and row["score_cache"]["error"] is None
    assert {k: v for k, v in row.items() if k != "score_cache"}.keys() == plain["results"][0].keys()
    rerun = bench(tiny_xlmr, "--score-cache", str(cache), env=env)["results"][0]["score_cache"]
    assert rerun["first"]["hits"] == distinct  # the store kept them: known from the first pass on


def test_bench_with_a_broken_cache_measures_uncached_and_says_why(tiny_xlmr: Path, tmp_path: Path):
    cache = tmp_path / "scores.sqlite"
    cache.write_bytes(b"not a database " * 500)
    row = bench(tiny_xlmr, "--score-cache", str(cache), env={"BGE_RERANK_CACHE": str(tmp_path / "own")})[
        "results"
    ][0]
    assert row["error"] is None and "DatabaseError" in row["score_cache"]["error"]
    assert row["score_cache"]["again"]["hits"] == 0


def test_bench_table_shows_the_cache_columns():
    from rich.console import Console

    from bge_rerank_cli.cli.bench import _table

    runs = CacheRuns("/c/scores.sqlite", CachePass(0.1, 400.0, 0, 40), CachePass(0.001, 40000.0, 40, 0))
    rows = [
        Measurement("torch-fp32", 40, 12000, 10.0, 4.0, 1200.0, 25, 81, 2345.0, None, 3.0, "cpu fp32", score_cache=runs),
        Measurement("onnx-int8", 40, 12000, 10.0, 4.0, 1200.0, 25, 81, 2345.0, None, 3.0, "cpu int8",
                    score_cache=CacheRuns("/c/scores.sqlite", CachePass(), CachePass(), "DatabaseError: no")),
    ]  # fmt: skip
    header = {"model": "m", "device": "cpu", "requests": 5, "machine": "AMD EPYC", "isa": {}}
    console = Console(width=132, record=True)
    console.print(_table(header, rows))
    text = console.export_text()
    row = next(line for line in text.splitlines() if line.startswith("torch-fp32"))
    assert "cached p/s" in text and "40000.00" in row and "40/40" in row
    assert "onnx-int8: the score cache failed, uncached: DatabaseError: no" in text


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_a_bad_cache_size_is_refused_before_anything_runs(command: str, tiny_xlmr: Path):
    args = eval_args(tiny_xlmr, None) if command == "eval" else ["bench", "-m", str(tiny_xlmr)]
    result = run_cli([*args, "--score-cache", "x.sqlite", "--score-cache-max-size", "lots"])
    assert result.returncode == 2 and b"score cache size 'lots'" in result.stderr
