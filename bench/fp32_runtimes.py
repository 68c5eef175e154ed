"""fp32 forward passes of one model on three CPU runtimes, on the same batches: torch (transformers'
sequence classifier), onnxruntime and OpenVINO (both on bge-rerank's ONNX export). Raw model speed, no
tokenizer or server: how far any fp32 runtime on this CPU goes past torch's.

Batches are shaped like the engine's on a CPU (about 512 real tokens each, no padding), with random ids;
each runtime runs in its own process (``--worker``), warms up once, then the best of ``--repeats`` passes
over all batches is kept. OpenVINO is asked for f32 explicitly (INFERENCE_PRECISION_HINT), since on CPUs
with native bf16 it may otherwise choose bf16.

    python bench/fp32_runtimes.py --model bench/.cache/bge-reranker-v2-m3-shape \\
        --onnx bench/.cache/exports/onnx/<...>-none-<...>/model.onnx --openvino-python /tmp/ov/bin/python

``--openvino-python``: an interpreter with ``openvino`` and ``onnxruntime`` (OpenVINO is not one of
bge-rerank's dependencies); without it the OpenVINO row is skipped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SHAPES = [(3, 180), (2, 300), (4, 120), (6, 80), (2, 250)]  # (pairs, tokens) per batch


def feeds(vocab: int) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for b, n in SHAPES:
        ids = rng.integers(5, vocab - 1, size=(b, n), dtype=np.int64)
        ids[:, 0] = 0
        out.append({"input_ids": ids, "attention_mask": np.ones((b, n), dtype=np.int64)})
    return out


def worker(engine: str, model: str, vocab: int, repeats: int) -> dict:
    batches = feeds(vocab)
    if engine == "torch":
        import torch
        from transformers import AutoModelForSequenceClassification

        torch.set_num_threads(2)
        net = AutoModelForSequenceClassification.from_pretrained(model).eval()

        def run(f: dict) -> list[float]:
            with torch.inference_mode():
                t = {k: torch.from_numpy(v) for k, v in f.items()}
                return net(**t).logits[:, 0].tolist()

    elif engine == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}

        def run(f: dict) -> list[float]:
            return session.run(None, {k: v for k, v in f.items() if k in names})[0][:, 0].tolist()

    else:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(model), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2,
        })  # fmt: skip
        request = compiled.create_infer_request()
        names = {i.get_any_name() for i in compiled.inputs}

        def run(f: dict) -> list[float]:
            out = request.infer({k: v for k, v in f.items() if k in names})[compiled.outputs[0]]
            return out[:, 0].tolist()

    logits = [run(f) for f in batches]  # warm-up, and the logits to compare
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for f in batches:
            run(f)
        times.append(time.perf_counter() - started)
    tokens = sum(b * n for b, n in SHAPES)
    return {"engine": engine, "tokens_per_s": tokens / min(times), "logits": [x for b in logits for x in b]}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="The model directory (torch).")
    parser.add_argument("--onnx", required=True, help="Its fp32 ONNX export (model.onnx).")
    parser.add_argument("--openvino-python", help="A Python with openvino and onnxruntime.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    if args.worker:
        path = args.model if args.worker == "torch" else args.onnx
        print(json.dumps(worker(args.worker, path, vocab, args.repeats)))
        return 0
    runs = [("torch", sys.executable), ("onnxruntime", sys.executable)]
    if args.openvino_python:
        runs.append(("openvino", args.openvino_python))
    rows = []
    for engine, python in runs:
        cmd = [python, __file__, "--worker", engine, "--model", args.model, "--onnx", args.onnx]
        out = subprocess.run([*cmd, "--repeats", str(args.repeats)], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{engine} failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if not rows:
        return 1
    base = rows[0]
    print(f"{sum(b * n for b, n in SHAPES)} tokens in {len(SHAPES)} batches {SHAPES}, fp32, 2 threads")
    print("| runtime | tokens/s | × torch | max abs Δlogit vs torch |")
    print("|---|---|---|---|")
    for r in rows:
        delta = max(abs(a - b) for a, b in zip(r["logits"], base["logits"], strict=True))
        ratio = r["tokens_per_s"] / base["tokens_per_s"]
        print(f"| {r['engine']} | {r['tokens_per_s']:.0f} | {ratio:.2f} | {delta:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
