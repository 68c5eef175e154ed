"""`bge-rerank bench`: every setup measured in its own process on the same pairs (no timing asserted)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from bge_rerank_cli.benchmark import Measurement, Request, percentile, setup_config, with_deltas
from bge_rerank_cli.cli import app
from bge_rerank_cli.config import LoaderConfig, cpu_threads
from bge_rerank_cli.errors import UsageError
from tests.conftest import SAMPLES

runner = CliRunner()


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BGE_RERANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_bench_measures_each_setup_on_the_same_pairs(tiny_xlmr: Path, own_cache: Path):
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    result = runner.invoke(
        app,
        ["bench", str(SAMPLES / "rerank.jsonl"), "-m", str(tiny_xlmr), "--setups", "torch-fp32,onnx-fp32,onnx-int8", "-f", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = orjson.loads(result.stdout)
    lines = [json.loads(line) for line in (SAMPLES / "rerank.jsonl").read_text().splitlines() if line.strip()]
    assert report["requests"] == len(lines)
    rows = {r["setup"]: r for r in report["results"]}
    assert list(rows) == ["torch-fp32", "onnx-fp32", "onnx-int8"]
    n_pairs = sum(len(line["documents"]) for line in lines)
    for row in rows.values():
        assert row["error"] is None
        assert row["pairs"] == n_pairs and row["tokens"] > n_pairs
        assert row["pairs_per_s"] > 0 and 0 < row["latency_p50_ms"] <= row["latency_p95_ms"]
        assert row["peak_rss_mb"] > 50 and row["peak_gpu_mb"] is None
    assert rows["torch-fp32"]["max_abs_delta"] == 0.0
    # the machine's limit, measured first in the same run: one ceiling per backend and precision
    assert [c["kind"] for c in report["ceilings"]] == ["torch-fp32", "onnxruntime-fp32", "onnxruntime-int8"]
    assert all(c["error"] is None and c["rate"] > 0 for c in report["ceilings"])
    assert list(report["isa"]) == ["AVX2", "AVX-512", "VNNI", "BF16", "AMX"]
    assert report["shape"]["layers"] > 0
    for row in rows.values():
        assert row["flops_per_token"] > 0 and row["pct_of_ceiling"] > 0
    assert rows["onnx-int8"]["ceiling"] == "onnxruntime-int8"
    assert rows["onnx-fp32"]["max_abs_delta"] < 1e-4  # the export agrees with torch
    assert rows["onnx-int8"]["device"] == "cpu int8"


def test_bench_reports_a_setup_that_cannot_run_and_goes_on(tiny_xlmr: Path, own_cache: Path):
    result = runner.invoke(
        app,
        ["bench", "-m", str(tiny_xlmr), "--setups", "torch-fp32,torch-fp16", "--limit", "2", "-f", "table"],
    )
    assert result.exit_code == 0, result.stderr
    assert (
        "torch-fp16" in result.stdout and "cpu fp32" in result.stdout
    )  # fp16 on a CPU runs fp32, and says so
    missing = runner.invoke(
        app, ["bench", "-m", str(own_cache / "nope"), "--setups", "torch-fp32", "-f", "json"]
    )
    assert missing.exit_code == 5  # ExitCode.CHECKS_FAILED: a setup that failed
    assert "does not exist" in orjson.loads(missing.stdout)["results"][0]["error"]


def test_bench_refuses_unknown_setups_before_loading_anything(tiny_xlmr: Path):
    result = runner.invoke(app, ["bench", "-m", str(tiny_xlmr), "--setups", "torch-fp8"])
    assert result.exit_code == 2 and "unknown setup 'torch-fp8'" in result.stderr


def test_setups_map_to_loader_configs():
    base = LoaderConfig(model="m", batch_size=8)
    assert setup_config(base, "onnx-int8") == LoaderConfig(
        model="m", batch_size=8, backend="onnx", quantize="int8"
    )
    assert setup_config(base, "torch-bf16").dtype == "bf16"
    with pytest.raises(UsageError):
        setup_config(base, "tpu-fp32")


def test_deltas_are_against_the_first_setup_that_ran():
    results = with_deltas(
        [
            Measurement("a", error="failed"),
            Measurement("b", scores=(0.5, 0.25)),
            Measurement("c", scores=(0.5, 0.3)),
        ]
    )
    assert [r.max_abs_delta for r in results] == [None, 0.0, pytest.approx(0.05)]


def test_percentiles():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile([7.0], 95) == 7.0
    assert Request("q", ("a", "b")).pairs()[1].passage == "b"


def test_cpu_threads_follow_omp_num_threads(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert 1 <= cpu_threads() <= (os.cpu_count() or 1)
