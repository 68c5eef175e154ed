"""--backend auto: the exact backend `bench --recommend` measured fastest for a model on this CPU."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from bge_rerank_cli import recommend
from bge_rerank_cli.benchmark import Measurement
from bge_rerank_cli.cli import app
from bge_rerank_cli.config import LoaderConfig
from tests.conftest import SAMPLES

runner = CliRunner()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BGE_RERANK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "recommend.json"


def measured(torch: float, onnx: float | None, int8: float | None = None) -> list[Measurement]:
    rows = [Measurement("torch-fp32", pairs_per_s=torch)]
    rows += [Measurement("onnx-fp32", pairs_per_s=onnx)] if onnx else [Measurement("onnx-fp32", error="no")]
    rows += [Measurement("onnx-int8", pairs_per_s=int8, max_abs_delta=0.01)] if int8 else []
    return rows


def test_the_faster_exact_backend_is_chosen_and_int8_only_reported():
    chosen = recommend.choose(measured(10.0, 13.0, 26.0))
    assert chosen is not None and chosen.backend == "onnx"
    assert chosen.int8_speedup == pytest.approx(2.0) and chosen.int8_max_delta == 0.01
    assert "int8 pays here: 2.00x" in chosen.summary() and "1.30x torch" in chosen.summary()
    assert recommend.choose(measured(10.0, 9.0)).backend == "torch"  # type: ignore[union-attr]
    assert recommend.choose(measured(10.0, None)).backend == "torch"  # type: ignore[union-attr]
    assert recommend.choose([Measurement("torch-bf16", pairs_per_s=5.0)]) is None  # bf16 is not exact


def test_auto_uses_the_recorded_choice_for_this_model_and_cpu_only(store: Path, monkeypatch, tiny_xlmr: Path):
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    config = LoaderConfig(model=str(tiny_xlmr))
    assert (
        config.backend == "auto" and recommend.resolve_backend(config).backend == "torch"
    )  # nothing recorded
    recommend.save(config, recommend.choose(measured(10.0, 13.0)))  # type: ignore[arg-type]
    assert store.is_file()
    assert recommend.resolve_backend(config).backend == "onnx"
    assert recommend.resolve_backend(LoaderConfig(model=str(tiny_xlmr), backend="torch")).backend == "torch"
    assert recommend.resolve_backend(LoaderConfig(model="other/model")).backend == "torch"
    assert recommend.resolve_backend(LoaderConfig(model="x", quantize="int8")).backend == "onnx"
    monkeypatch.setattr(recommend, "cpu_signature", lambda: "another CPU")
    assert recommend.resolve_backend(config).backend == "torch"


def test_bench_recommend_records_what_it_measured(store: Path, tiny_xlmr: Path):
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    args = ["bench", str(SAMPLES / "rerank.jsonl"), "-m", str(tiny_xlmr), "--limit", "2", "--no-ceilings"]
    result = runner.invoke(
        app, [*args, "--setups", "torch-fp32,onnx-fp32,onnx-int8", "--recommend", "-f", "json"]
    )
    assert result.exit_code == 0, result.stderr
    report = orjson.loads(result.stdout)
    rows = {r["setup"]: r["pairs_per_s"] for r in report["results"]}
    chosen = report["recommendation"]
    assert chosen["backend"] == ("onnx" if rows["onnx-fp32"] > rows["torch-fp32"] else "torch")
    assert "--backend auto will use" in result.stderr
    from bge_rerank_cli.backends import load_scorer

    load_scorer.cache_clear()
    assert load_scorer(LoaderConfig(model=str(tiny_xlmr))).describe()["backend"] == chosen["backend"]

    only_torch = runner.invoke(app, [*args, "--setups", "torch-fp32", "--recommend", "-f", "json"])
    assert only_torch.exit_code == 2 and "needs both torch-fp32 and onnx-fp32" in only_torch.stderr
