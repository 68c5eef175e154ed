"""Speed against the machine's own limit (#16): FLOPs per token, GEMM ceilings, % of ceiling, ISA flags.

Deterministic: every figure is computed from injected numbers; the kernels are run only to see that
they run (tiny problems, no timing asserted)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console

from bge_rerank_cli import ceilings
from bge_rerank_cli.benchmark import Measurement, with_ceilings
from bge_rerank_cli.ceilings import Ceiling, EncoderShape
from bge_rerank_cli.hub import cached_snapshot, model_folder

BGE_M3 = {"num_hidden_layers": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16}


def test_flops_per_token_of_bge_reranker_v2_m3():
    shape = ceilings.shape_from_config(BGE_M3)
    assert shape == EncoderShape(layers=24, hidden=1024, ffn=4096, heads=16)
    # 24 x (8 x 1024² + 4 x 1024 x 4096): Q, K, V, output projections and the FFN, 2 FLOPs a multiply-add
    assert shape.linear_flops() == 24 * (8 * 1024**2 + 4 * 1024 * 4096) == 603_979_776
    # attention: 4 x n x hidden per layer, for a token attending over n tokens
    assert shape.attention_flops(512) == 24 * 4 * 512 * 1024 == 50_331_648
    assert shape.flops_per_token(512) == 654_311_424
    assert shape.gemm() == (512, 1024, 4096)


def test_shape_needs_every_width():
    assert ceilings.shape_from_config({**BGE_M3, "intermediate_size": None}) is None
    assert ceilings.shape_from_config({}) is None


def test_attention_length_is_the_token_weighted_mean():
    assert ceilings.attention_length([10, 30]) == (100 + 900) / 40
    assert ceilings.attention_length([64, 64, 64]) == 64
    assert ceilings.attention_length([]) == 0.0
    shape = ceilings.shape_from_config(BGE_M3)
    assert shape is not None
    lengths = [10, 30, 200]  # the workload's FLOPs are Σ n_i x flops_per_token(n_i)
    total = sum(n * shape.flops_per_token(n) for n in lengths)
    assert total == pytest.approx(sum(lengths) * shape.flops_per_token(ceilings.attention_length(lengths)))


def test_percent_of_ceiling():
    assert ceilings.percent_of_ceiling(100.0, 6e8, 2e11) == pytest.approx(30.0)
    assert ceilings.percent_of_ceiling(100.0, 6e8, 0.0) is None


def test_a_ceiling_is_its_best_calls_rate():
    c = Ceiling(
        "torch-fp32", 512, 1024, 4096, seconds=0.0232, repeats=10, threads=2, op="torch.nn.functional.linear"
    )
    assert c.flops == 2 * 512 * 1024 * 4096
    assert c.rate == pytest.approx(c.flops / 0.0232)
    assert c.describe() == "torch fp32 linear 512x1024x4096, 2 threads: 185 GFLOP/s"
    q = Ceiling("onnxruntime-int8", 512, 1024, 4096, seconds=0.00555, threads=2, op="DynamicQuantizeMatMul")
    assert q.unit == "GOP/s" and q.describe().endswith("774 GOP/s [DynamicQuantizeMatMul]")
    failed = Ceiling("onnxruntime-fp32", 512, 1024, 4096, error="ModuleNotFoundError: onnxruntime")
    assert failed.rate == 0.0 and "not measured (ModuleNotFoundError" in failed.describe()
    assert ceilings.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_each_engine_has_its_matching_ceiling():
    kind = ceilings.ceiling_kind
    assert kind("torch-fp32") == kind("ours-torch-fp32") == kind("st-predict-fp32") == "torch-fp32"
    assert kind("flag-fp32") == "torch-fp32" and kind("flag-fp16") == "torch-fp16"
    assert kind("onnx-fp32") == kind("ours-onnx-fp32") == "onnxruntime-fp32"
    assert kind("onnx-int8") == kind("ours-onnx-int8") == "onnxruntime-int8"
    assert kind("torch-bf16") == "torch-bf16"
    engines = ["st-predict-fp32", "ours-torch-fp32", "ours-onnx-int8", "ours-onnx-fp32"]
    assert ceilings.kinds_for(engines) == ["torch-fp32", "onnxruntime-int8", "onnxruntime-fp32"]


def test_percent_for_uses_the_matching_measured_ceiling():
    measured = [
        Ceiling("torch-fp32", 512, 1024, 4096, seconds=2 * 512 * 1024 * 4096 / 2e11),  # 200 GFLOP/s
        Ceiling("onnxruntime-int8", 512, 1024, 4096, seconds=2 * 512 * 1024 * 4096 / 8e11),  # 800 GOP/s
        Ceiling("onnxruntime-fp32", 512, 1024, 4096, error="missing"),
    ]
    assert ceilings.percent_for("ours-torch-fp32", 100.0, 6e8, measured) == pytest.approx(30.0)
    assert ceilings.percent_for("onnx-int8", 100.0, 6e8, measured) == pytest.approx(7.5)
    assert ceilings.percent_for("onnx-fp32", 100.0, 6e8, measured) is None  # failed: no ceiling
    assert ceilings.percent_for("torch-bf16", 100.0, 6e8, measured) is None  # not measured


def test_best_of_keeps_the_fastest_run_of_each_kind():
    slow = Ceiling("torch-fp32", 8, 8, 8, seconds=2.0)
    fast = Ceiling("torch-fp32", 8, 8, 8, seconds=1.0)
    other = Ceiling("onnxruntime-fp32", 8, 8, 8, seconds=1.0)
    assert ceilings.best_of([slow, other], [fast]) == [fast, other]


def test_ceiling_lines_show_the_best_and_both_readings():
    gemm = (512, 1024, 4096)  # 4.295 GFLOP a call
    before = [
        Ceiling("torch-fp32", *gemm, seconds=0.04295, threads=2),
        Ceiling("onnxruntime-fp32", *gemm, seconds=0.02),
    ]
    after = [Ceiling("torch-fp32", *gemm, seconds=0.02525, threads=2),
             Ceiling("onnxruntime-fp32", *gemm, error="ModuleNotFoundError: onnxruntime")]  # fmt: skip
    torch_line, ort_line = ceilings.ceiling_lines(before, after, "servers")
    assert torch_line == "ceiling: torch fp32 linear 512x1024x4096, 2 threads: 170 GFLOP/s (before the servers 100, after 170)"  # fmt: skip
    assert ort_line == "ceiling: onnxruntime fp32 MatMul 512x1024x4096: 215 GFLOP/s"  # one reading: no spread


def test_bench_measurements_get_flops_and_percent_of_ceiling():
    shape = ceilings.shape_from_config(BGE_M3)
    measured = [Ceiling("onnxruntime-int8", 512, 1024, 4096, seconds=2 * 512 * 1024 * 4096 / 8e11)]
    rows = [
        Measurement("onnx-int8", tokens=1000, seconds=10.0, tokens_per_s=100.0, attention_length=512.0),
        Measurement("torch-fp32", tokens=1000, seconds=10.0, tokens_per_s=100.0, attention_length=512.0),
        Measurement("onnx-fp32", error="no onnxruntime"),
    ]
    out = with_ceilings(rows, shape, measured)
    assert out[0].flops_per_token == 654_311_424 and out[0].ceiling == "onnxruntime-int8"
    assert out[0].pct_of_ceiling == pytest.approx(100 * 100 * 654_311_424 / 8e11)
    assert out[1].pct_of_ceiling is None and out[1].ceiling == "torch-fp32"  # its ceiling was not measured
    assert out[2] == rows[2]
    assert with_ceilings(rows, None, measured) == rows  # shape unknown: nothing to compute


def test_isa_line_names_every_flag():
    flags = ceilings.isa_flags()
    assert list(flags) == ["AVX2", "AVX-512", "VNNI", "BF16", "AMX"]
    line = ceilings.isa_line({"AVX2": True, "AVX-512": True, "VNNI": False, "BF16": False, "AMX": False})
    assert line == "ISA: AVX2 yes, AVX-512 yes, VNNI no, BF16 no, AMX no"


def test_the_kernels_run_on_a_tiny_problem():
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    out = ceilings.measure(
        ["torch-fp32", "onnxruntime-fp32", "onnxruntime-int8", "nope"], (8, 16, 32), repeats=1
    )
    assert [c.kind for c in out] == ["torch-fp32", "onnxruntime-fp32", "onnxruntime-int8", "nope"]
    assert all(c.error is None and c.rate > 0 for c in out[:3])
    assert out[0].op == "torch.nn.functional.linear" and out[1].op == "MatMul"
    assert "MatMul" in out[2].op  # DynamicQuantizeMatMul, or MatMulInteger where it is not fused
    assert out[3].error == "unknown ceiling"


def test_shape_is_read_from_a_folder_or_the_cache_without_network(tmp_path: Path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(BGE_M3))
    assert ceilings.read_shape(str(folder)) == EncoderShape(24, 1024, 4096, 16)
    cache = tmp_path / "hub"
    snapshot = cache / "models--org--reranker" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(BGE_M3))
    (cache / "models--org--reranker" / "refs").mkdir()
    (cache / "models--org--reranker" / "refs" / "main").write_text("abc123\n")
    assert cached_snapshot("org/reranker", None, str(cache)) == snapshot
    assert cached_snapshot("org/reranker", "abc123", str(cache)) == snapshot  # a commit as the revision
    assert cached_snapshot("org/other", None, str(cache)) is None
    assert model_folder("org/reranker", None, str(cache)) == snapshot
    assert ceilings.read_shape("org/reranker", None, str(cache)) == EncoderShape(24, 1024, 4096, 16)
    assert ceilings.read_shape("org/missing", None, str(cache)) is None


def _render(table: object, width: int) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, highlight=False).print(table)
    return buffer.getvalue()


@pytest.mark.parametrize("gpu", [False, True])
def test_bench_table_with_ceilings_fits_80_columns(gpu: bool):
    from bge_rerank_cli.cli.bench import _table

    measured = [
        Ceiling("torch-fp32", 512, 1024, 4096, seconds=0.0232, threads=2, op="torch.nn.functional.linear"),
        Ceiling("onnxruntime-int8", 512, 1024, 4096, seconds=0.00555, threads=2, op="DynamicQuantizeMatMul"),
    ]
    device = "cuda fp16" if gpu else "cpu fp32"
    rows = [
        Measurement("torch-fp32", 40, 12000, 10.0, 4.0, 123456.0, 250, 812, 12345.0, 23456.0 if gpu else None,
                    3.0, device, 0.0, 200.0, 6.5e8, "torch-fp32", 42.3),
        Measurement("onnx-int8", 40, 12000, 10.0, 4.0, 1200.0, 25, 81, 2345.0, None, 3.0, "cpu int8", 9.1e-3,
                    200.0, 6.5e8, "onnxruntime-int8", 12.3),
        Measurement("torch-bf16", error="a long reason " * 8),
    ]  # fmt: skip
    header = {"model": "/models/bge-reranker-v2-m3", "device": "cuda" if gpu else "cpu", "requests": 5,
              "machine": "AMD EPYC, 2 CPU threads, Python 3.11.7",
              "isa": {"AVX2": True, "AVX-512": True, "VNNI": True, "BF16": True, "AMX": False}}  # fmt: skip
    text = _render(_table(header, rows, measured), 80)
    lines = text.splitlines()
    assert all(cell_len(line) <= 80 for line in lines), [line for line in lines if cell_len(line) > 80]
    assert "…" not in text  # nothing cut
    assert "ISA: AVX2 yes, AVX-512 yes, VNNI yes, BF16 yes, AMX no" in text
    assert "torch fp32 linear 512x1024x4096, 2 threads: 185 GFLOP/s" in text
    assert "774 GOP/s" in text and "0.65 GFLOP per token" in text
    row = next(line for line in lines if line.startswith("torch-fp32"))
    assert "42%" in row and "123456" in row and (" 23456 " in row) == gpu
    assert "torch-bf16 failed: a long reason" in text.replace("\n", " ")
