"""Export memory said before it is spent (#16): the pre-export check on injected numbers, and the int8
export's embedding tables quantised a slice at a time, as onnxruntime quantises them."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bge_rerank_cli import memory
from bge_rerank_cli.cli import app
from bge_rerank_cli.errors import ExitCode, ModelError

GIB = 2**30
runner = CliRunner()


def test_the_export_check_refuses_with_both_figures():
    memory.check_export_memory("m", weights=2 * GIB, available=7 * GIB)  # 6 GiB needed: fits
    with pytest.raises(ModelError) as caught:
        memory.check_export_memory("BAAI/bge-reranker-v2-m3", weights=int(2.1 * GIB), available=4 * GIB)
    error = caught.value
    assert error.exit_code == ExitCode.MODEL
    assert "needs about 6.3 GiB of free memory (3x its 2.1 GiB of weights)" in error.message
    assert "only 4.0 GiB is available" in error.message
    assert "backend='torch'" in str(error) and "BGE_RERANK_SKIP_MEMORY_CHECK=1" in str(error)
    assert memory.export_need(1000) == 3000


def test_free_memory_is_read_from_meminfo_and_a_cgroup_limit():
    meminfo = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   23819000 kB\n"
    assert memory.parse_meminfo(meminfo) == 23819000 * 1024
    assert memory.parse_meminfo("MemTotal: 1 kB\n") is None
    assert memory.cgroup_available("max\n", "123\n") is None
    assert memory.cgroup_available("1000\n", "700\n", "anon 500\ninactive_file 100\n") == 400
    assert memory.cgroup_available("1000", "1200") == 0


def test_weight_bytes_counts_what_transformers_loads(tmp_path: Path):
    assert memory.weight_bytes(tmp_path) is None
    (tmp_path / "pytorch_model.bin").write_bytes(b"x" * 300)
    assert memory.weight_bytes(tmp_path) == 300
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"x" * 50)
    assert memory.weight_bytes(tmp_path) == 150  # safetensors preferred, shards summed


def test_an_export_that_would_not_fit_is_refused_before_the_model_loads(
    tiny_xlmr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    monkeypatch.setenv("BGE_RERANK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    from bge_rerank_cli.backends import load_scorer

    load_scorer.cache_clear()  # an earlier test may have loaded this model in-process already
    weights = memory.weight_bytes(tiny_xlmr)
    assert weights
    result = runner.invoke(app, ["score", "-q", "a", "-p", "b", "-m", str(tiny_xlmr), "--backend", "onnx"])
    assert result.exit_code == ExitCode.MODEL, result.output
    assert "of free memory" in result.stderr and "0.0 GiB is available" in result.stderr
    assert "--backend torch" in result.stderr  # the CLI names its own flag
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("meta.json"))
    monkeypatch.setenv("BGE_RERANK_SKIP_MEMORY_CHECK", "1")
    memory.precheck_export(str(tiny_xlmr))  # overridden: no error


def test_the_export_check_is_skipped_when_sizes_are_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    memory.precheck_export(str(tmp_path))  # a folder without weights
    memory.precheck_export("org/not-cached", None, str(tmp_path))  # a Hub id not in the cache
    monkeypatch.setattr(memory, "available_bytes", lambda: None)
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10_000)
    memory.precheck_export(str(tmp_path))  # free memory unknown


def test_tables_are_quantised_as_onnxruntime_quantises_a_gather():
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    import numpy as np
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import quantize_data

    from bge_rerank_cli.backends.onnx_scorer import quantize_table

    table = np.random.default_rng(0).standard_normal((1000, 24)).astype(np.float32) * 0.3 + 0.1
    quantized, scale, zero = quantize_table(table, rows_per_slice=7)  # slices that do not divide the rows
    zero_ref, scale_ref, quantized_ref = quantize_data(table.flatten(), TensorProto.UINT8, False)[-3:]
    assert quantized.dtype == np.uint8 and quantized.shape == table.shape
    assert np.array_equal(quantized.reshape(-1), quantized_ref)
    assert scale == scale_ref and zero == zero_ref


def test_an_int8_export_reads_uint8_tables_and_keeps_its_inputs(tiny_xlmr: Path, tmp_path: Path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    import onnx

    from bge_rerank_cli.backends.onnx_scorer import export, export_dir
    from bge_rerank_cli.config import LoaderConfig

    monkeypatch.setenv("BGE_RERANK_CACHE", str(tmp_path))
    config = LoaderConfig(model=str(tiny_xlmr), backend="onnx", quantize="int8")
    folder = export_dir(config)
    export(config, folder)
    proto = onnx.load(str(folder / "model.onnx"))
    assert [i.name for i in proto.graph.input] == ["input_ids", "attention_mask"]
    types = {i.name: i.data_type for i in proto.graph.initializer}
    gathers = [n for n in proto.graph.node if n.op_type == "Gather" and n.input[0] in types]
    assert gathers and all(types[n.input[0]] == onnx.TensorProto.UINT8 for n in gathers)
    consumers = {i for n in proto.graph.node if n.op_type == "DequantizeLinear" for i in n.input}
    assert all(n.output[0] in consumers for n in gathers)
    assert any(n.op_type == "MatMulInteger" for n in proto.graph.node)
