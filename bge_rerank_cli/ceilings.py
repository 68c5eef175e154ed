"""This machine's own limits, measured in the same run as the engines, and each engine's share of them.

A cross-encoder's forward pass is almost all matrix products (GEMMs), so the rate a backend's own GEMM
kernel reaches on a layer-sized problem (``tokens x hidden x ffn``, e.g. 512 x 1024 x 4096) is the
ceiling its scoring can approach: torch's ``linear`` for the torch engines (the matmul every
``nn.Linear`` calls, with its out x in weight layout: torch's kernels differ by layout), onnxruntime's
MatMul for ONNX fp32, and for ONNX int8 the op onnxruntime's ``quantize_dynamic`` makes of a MatMul
(the CPU runs it as ``DynamicQuantizeMatMul``: int8 weights, activations quantised on the fly). An
engine's share is its useful work rate over that ceiling: tokens/s x FLOPs per token / GEMM rate.

FLOPs count a multiply-add as 2. Per token of an encoder with L layers, hidden size h and FFN size f,
attending over a sequence of n tokens: L x (8h² + 4hf) for the projections (Q, K, V, output: 4 x 2h²;
FFN up and down: 2 x 2hf) plus L x 4nh for attention (scores QKᵀ and their product with V, 2nh each).
Embedding look-ups, LayerNorm, softmax, GELU and the classifier (once per pair) are left out: they are
not GEMMs and together cost well under 1% here. Over a workload of pairs with n_i tokens each, the
attention term uses the token-weighted mean length Σn_i² / Σn_i (:func:`attention_length`).

Everything heavy (torch, onnxruntime, numpy) is imported inside the functions that time kernels;
:func:`measure_in_child` runs them in a fresh process so the caller's memory and threads stay its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GEMM_TOKENS = 512  # about one CPU batch: the engine closes a batch once it holds 512 real tokens
GPU_GEMM_TOKENS = 8192  # a GPU batch is larger; 512 rows would leave most of a GPU idle
DEFAULT_GEMM = (GEMM_TOKENS, 1024, 4096)  # bge-reranker-v2-m3's FFN up-projection
REPEATS = 10
# The ceiling that matches each engine: by backend and precision.
ONNX_FP32, ONNX_INT8 = "onnxruntime-fp32", "onnxruntime-int8"
CEILING_LABELS = {
    "torch-fp32": "torch fp32 linear",
    "torch-fp16": "torch fp16 linear",
    "torch-bf16": "torch bf16 linear",
    ONNX_FP32: "onnxruntime fp32 MatMul",
    ONNX_INT8: "onnxruntime int8 MatMul",  # as quantize_dynamic makes it: DynamicQuantizeMatMul on a CPU
}


@dataclass(frozen=True)
class EncoderShape:
    """What FLOPs per token depend on: a BERT-family encoder's layer count and widths."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    # Decoders (Qwen3, Gemma, Llama): query width heads x head_dim, fewer key/value heads (grouped-query
    # attention) and a gated FFN of three matrices. 0 / False: an encoder's (query width = hidden).
    q_dim: int = 0
    kv_dim: int = 0
    gated: bool = False

    def linear_flops(self) -> int:
        """Per token, independent of sequence length: the Q/K/V/output projections and the FFN."""
        if not self.q_dim:
            return self.layers * (8 * self.hidden**2 + 4 * self.hidden * self.ffn)
        projections = 2 * self.hidden * (2 * self.q_dim + 2 * self.kv_dim)
        return self.layers * (projections + (6 if self.gated else 4) * self.hidden * self.ffn)

    def attention_flops(self, seq_len: float) -> float:
        """Per token attending over ``seq_len`` tokens: QKᵀ and attention x V, 2 x seq_len x width each."""
        return self.layers * 4 * seq_len * (self.q_dim or self.hidden)

    def flops_per_token(self, seq_len: float) -> float:
        return self.linear_flops() + self.attention_flops(seq_len)

    def gemm(self, tokens: int = GEMM_TOKENS) -> tuple[int, int, int]:
        """The layer-sized ceiling problem for this shape: tokens x hidden x ffn."""
        return (tokens, self.hidden, self.ffn)


def gemm_tokens(device: str) -> int:
    """The ceiling problem's row count (tokens) on ``device``: about one batch of the engine's."""
    return GPU_GEMM_TOKENS if device.startswith("cuda") else GEMM_TOKENS


def shape_from_config(cfg: Mapping[str, Any]) -> EncoderShape | None:
    """The encoder shape in a Hugging Face ``config.json`` (BERT, RoBERTa, XLM-R names); None if absent."""
    keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")
    values = [cfg.get(k) for k in keys]
    if not all(isinstance(v, int) and v > 0 for v in values):
        return None
    layers, hidden, ffn, heads = (int(v) for v in values)  # type: ignore[arg-type]
    kv_heads = cfg.get("num_key_value_heads")
    if isinstance(kv_heads, int) and kv_heads > 0:  # a decoder (Qwen3, Gemma, Llama): GQA, gated FFN
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        return EncoderShape(layers, hidden, ffn, heads, heads * head_dim, kv_heads * head_dim, True)
    return EncoderShape(layers, hidden, ffn, heads)


def read_shape(model: str, revision: str | None = None, cache_dir: str | None = None) -> EncoderShape | None:
    """The shape of ``model`` (a folder or a cached Hub id; never the network), or None if unknown."""
    from .hub import model_folder

    folder = model_folder(model, revision, cache_dir)
    config = folder / "config.json" if folder else None
    if config is None or not config.is_file():
        return None
    try:
        return shape_from_config(json.loads(config.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def attention_length(lengths: Iterable[int]) -> float:
    """The sequence length an average token attends over: Σn² / Σn over the pairs' token counts."""
    total = squares = 0
    for n in lengths:
        total += n
        squares += n * n
    return squares / total if total else 0.0


def percent_of_ceiling(tokens_per_s: float, flops_per_token: float, rate: float) -> float | None:
    """An engine's useful work rate as a percentage of a GEMM rate (both in FLOP/s); None without one."""
    if rate <= 0 or tokens_per_s < 0:
        return None
    return 100.0 * tokens_per_s * flops_per_token / rate


@dataclass(frozen=True)
class Ceiling:
    """One GEMM kernel's best measured rate on an ``m x k x n`` problem (``error`` instead if it failed)."""

    kind: str  # torch-fp32, torch-bf16, onnxruntime-fp32, onnxruntime-int8, ...
    m: int
    k: int
    n: int
    seconds: float = 0.0  # the fastest of the timed calls
    repeats: int = 0
    threads: int = 0
    device: str = "cpu"
    op: str = ""  # the kernel that ran: torch.nn.functional.linear, MatMul, DynamicQuantizeMatMul
    error: str | None = None

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n

    @property
    def rate(self) -> float:
        """FLOP/s (integer operations per second for int8)."""
        return self.flops / self.seconds if self.seconds > 0 and self.error is None else 0.0

    @property
    def unit(self) -> str:
        return "GOP/s" if self.kind.endswith("int8") else "GFLOP/s"

    def describe(self) -> str:
        """One line: ``torch fp32 linear 512x1024x4096, 2 threads: 72 GFLOP/s`` (the device named
        when it is not the CPU, the kernel when the label does not say it)."""
        label = CEILING_LABELS.get(self.kind, self.kind)
        head = f"{label} {self.m}x{self.k}x{self.n}" + ("" if self.device == "cpu" else f" on {self.device}")
        if self.error is not None:
            return f"{head}: not measured ({self.error})"
        threads = f", {self.threads} threads" if self.device == "cpu" and self.threads else ""
        op = f" [{self.op}]" if self.op and self.op.rsplit(".", 1)[-1] not in label else ""
        return f"{head}{threads}: {self.rate / 1e9:.0f} {self.unit}{op}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate": self.rate, "unit": self.unit}


def ceiling_kind(engine: str) -> str | None:
    """The ceiling that matches an engine or setup name (``torch-fp32``, ``onnx-int8``, ``ours-onnx-fp32``,
    ``st-predict-fp32``, ``flag-fp16``, ...): torch's linear at its precision for every torch engine,
    onnxruntime's fp32 or int8 MatMul for ONNX ones."""
    parts = engine.split("-")
    precision = parts[-1]
    if "onnx" in parts:
        return {"fp32": ONNX_FP32, "int8": ONNX_INT8}.get(precision)
    if precision in ("fp32", "fp16", "bf16"):
        return f"torch-{precision}"
    return None


def kinds_for(engines: Iterable[str]) -> list[str]:
    """The ceilings the given engines need, in the order they first appear."""
    return list(dict.fromkeys(k for k in (ceiling_kind(e) for e in engines) if k is not None))


def percent_for(engine: str, tokens_per_s: float, flops_per_token: float, ceilings: Sequence[Ceiling]) -> float | None:  # fmt: skip
    """``engine``'s percentage of its matching measured ceiling, or None when there is none."""
    kind = ceiling_kind(engine)
    match = next((c for c in ceilings if c.kind == kind and c.rate > 0), None)
    return percent_of_ceiling(tokens_per_s, flops_per_token, match.rate) if match else None


def best_of(*runs: Sequence[Ceiling]) -> list[Ceiling]:
    """Per kind, the fastest of several measurements (e.g. before and after the engines ran): the
    ceiling is what the machine reached, and a run slowed by a neighbour's load should not lower it."""
    best: dict[str, Ceiling] = {}
    for run in runs:
        for c in run:
            if c.kind not in best or c.rate > best[c.kind].rate:
                best[c.kind] = c
    return list(best.values())


def ceiling_lines(before: Sequence[Ceiling], after: Sequence[Ceiling], what: str = "engines") -> list[str]:
    """One report line per kind: the best of the two measurements, with both readings when both ran
    (``ceiling: torch fp32 linear 512x1024x4096, 2 threads: 171 GFLOP/s (before the engines 148, after
    171)``)."""
    lines = []
    for c in best_of(before, after):
        runs = [r for r in (*before, *after) if r.kind == c.kind and r.error is None]
        spread = ""
        if len(runs) == 2:
            spread = f" (before the {what} {runs[0].rate / 1e9:.0f}, after {runs[1].rate / 1e9:.0f})"
        lines.append(f"ceiling: {c.describe()}{spread}")
    return lines


def isa_flags() -> dict[str, bool]:
    """Which of the ISA extensions that GEMM speed hangs on this CPU has (doctor's reading of /proc/cpuinfo)."""
    from .cpuinfo import CPU_FLAGS, collect_cpu

    have = set(collect_cpu().flags)
    return {name: name in have for name in CPU_FLAGS}


def isa_line(flags: Mapping[str, bool]) -> str:
    """``ISA: AVX2 yes, AVX-512 yes, VNNI yes, BF16 yes, AMX no``."""
    return "ISA: " + ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in flags.items())


def _best(call: Any, repeats: int, sync: Any = None) -> float:
    call()  # warm-up: packing, thread pool start, first-call allocations
    if sync:
        sync()
    best = float("inf")
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        call()
        if sync:
            sync()
        best = min(best, time.perf_counter() - started)
    return best


def time_torch(
    m: int, k: int, n: int, *, dtype: str = "fp32", device: str = "cpu", repeats: int = REPEATS
) -> Ceiling:
    """torch's ``linear`` of an ``m x k`` activation by an ``n x k`` weight plus bias (the call and the
    weight layout of every ``nn.Linear`` in the model), best of ``repeats`` calls."""
    import torch

    from .config import cpu_threads

    threads = cpu_threads()
    if device == "cpu":
        torch.set_num_threads(threads)
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(device=device, dtype=torch_dtype)
    w = (torch.randn(n, k, generator=gen) * 0.02).to(device=device, dtype=torch_dtype)
    b = torch.zeros(n).to(device=device, dtype=torch_dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    linear = torch.nn.functional.linear
    with torch.inference_mode():
        seconds = _best(lambda: linear(a, w, b), repeats, sync)
    return Ceiling(f"torch-{dtype}", m, k, n, seconds, repeats, threads, device, "torch.nn.functional.linear")


def time_onnxruntime(m: int, k: int, n: int, *, int8: bool = False, repeats: int = REPEATS) -> Ceiling:
    """onnxruntime's CPU MatMul of an ``m x k`` input by a ``k x n`` weight, set up as our ONNX scorer
    sets up its session; with ``int8`` the one-MatMul graph is first quantised by ``quantize_dynamic``
    with the export's settings, so the kernel timed is the one the int8 model runs."""
    import logging
    import tempfile

    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from .config import cpu_threads

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((k, n), dtype=np.float32) * 0.02).astype(np.float32)
    a = rng.standard_normal((m, k), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    threads = cpu_threads()
    with tempfile.TemporaryDirectory(prefix="bge-rerank-gemm-") as tmp:
        path = Path(tmp) / "gemm.onnx"
        onnx.save(model, str(path))
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            logging.disable(logging.WARNING)  # its advice to pre-process is for whole models
            try:
                quantize_dynamic(str(path), str(Path(tmp) / "int8.onnx"), weight_type=QuantType.QInt8)
            finally:
                logging.disable(logging.NOTSET)
            path = Path(tmp) / "int8.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        optimized = Path(tmp) / "optimized.onnx"
        options.optimized_model_filepath = str(optimized)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        ops = [node.op_type for node in onnx.load(str(optimized)).graph.node] if optimized.is_file() else []
        seconds = _best(lambda: session.run(None, {"a": a}), repeats)
    op = next((o for o in ops if "MatMul" in o), "MatMul")
    return Ceiling(ONNX_INT8 if int8 else ONNX_FP32, m, k, n, seconds, repeats, threads, "cpu", op)


def measure(
    kinds: Sequence[str],
    gemm: tuple[int, int, int] = DEFAULT_GEMM,
    *,
    repeats: int = REPEATS,
    device: str = "cpu",
) -> list[Ceiling]:
    """Time each ceiling in ``kinds`` (see :data:`CEILING_LABELS`) in this process; one that cannot run
    here (onnxruntime missing, an fp16 kernel a CPU build lacks) comes back with ``error`` set."""
    m, k, n = gemm
    out = []
    for kind in kinds:
        try:
            if kind == ONNX_FP32:
                out.append(time_onnxruntime(m, k, n, repeats=repeats))
            elif kind == ONNX_INT8:
                out.append(time_onnxruntime(m, k, n, int8=True, repeats=repeats))
            elif kind.startswith("torch-"):
                out.append(time_torch(m, k, n, dtype=kind.split("-")[1], device=device, repeats=repeats))
            else:
                out.append(Ceiling(kind, m, k, n, error="unknown ceiling"))
        except Exception as exc:  # an optional package missing or a kernel this build lacks
            out.append(Ceiling(kind, m, k, n, device=device, error=f"{type(exc).__name__}: {exc}"[:200]))
    return out


def measure_in_child(
    kinds: Sequence[str],
    gemm: tuple[int, int, int] = DEFAULT_GEMM,
    *,
    repeats: int = REPEATS,
    device: str = "cpu",
    timeout: float | None = 600,
) -> list[Ceiling]:
    """:func:`measure` in a fresh Python process (its threads and memory are not the caller's)."""
    m, k, n = gemm
    job = {"kinds": list(kinds), "gemm": [m, k, n], "repeats": repeats, "device": device}
    try:
        out = subprocess.run(
            [sys.executable, "-m", "bge_rerank_cli.ceilings"],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return [
            Ceiling(kind, m, k, n, device=device, error=f"timed out after {timeout:.0f} s") for kind in kinds
        ]
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        why = (out.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return [Ceiling(kind, m, k, n, device=device, error=why) for kind in kinds]
    return [from_dict(row) for row in json.loads(lines[-1])]


def measure_for_model(
    model: str,
    kinds: Sequence[str],
    device: str = "cpu",
    *,
    tokens: int | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    timeout: float | None = 600,
) -> list[Ceiling]:
    """:func:`measure_in_child` on ``model``'s layer-sized problem: ``tokens`` (default: one batch on
    ``device``) x hidden x ffn, or x 1024 x 4096 when the model's shape is unknown."""
    shape = read_shape(model, revision, cache_dir)
    rows = tokens or gemm_tokens(device)
    gemm = shape.gemm(rows) if shape else (rows, *DEFAULT_GEMM[1:])
    return measure_in_child(kinds, gemm, device=device, timeout=timeout)


def from_dict(row: Mapping[str, Any]) -> Ceiling:
    fields = Ceiling.__dataclass_fields__
    return Ceiling(**{key: value for key, value in row.items() if key in fields})


def _child() -> int:
    job = json.loads(sys.stdin.read())
    gemm = tuple(int(x) for x in job["gemm"])
    results = measure(job["kinds"], gemm, repeats=int(job["repeats"]), device=job["device"])  # type: ignore[arg-type]
    print(json.dumps([c.to_dict() for c in results]))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child())
