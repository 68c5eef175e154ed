"""Does quantising the word-embedding table pay? int8 with the table quantised (what our export does)
against int8 with it left fp32, on the full-size shape: max |Δscore| against ONNX fp32, peak RSS and
the export's size on disk, each scoring 32 mixed pairs in its own process.

Needs bench/speed.py's full-size ONNX exports and workload (run `python bench/speed.py` once first).

    python bench/int8_embedding.py
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPORTS = ROOT / "bench" / ".cache" / "exports" / "onnx"
VARIANT = ROOT / "bench" / ".cache" / "int8-fp32-embedding"


def _export(kind: str) -> Path:
    return next(p for p in EXPORTS.iterdir() if f"m3-shape-{kind}" in p.name)


def build() -> None:
    """The int8 variant whose Gather tables stay fp32: MatMul weights only."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    VARIANT.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "meta.json"):
        (VARIANT / name).write_bytes((_export("int8") / name).read_bytes())
    quantize_dynamic(str(_export("none") / "model.onnx"), str(VARIANT / "model.onnx"), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"], use_external_data_format=True)  # fmt: skip


def score(folder: Path) -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    from bge_rerank_cli.backends.onnx_scorer import OnnxScorer
    from bge_rerank_cli.config import LoaderConfig
    from bge_rerank_cli.engine import score_pairs
    from bge_rerank_cli.records import Pair

    pairs = json.loads((ROOT / "bench" / ".cache" / "workload-64.json").read_text())[:32]
    quantize = "none" if folder == _export("none") else "int8"
    scorer = OnnxScorer(LoaderConfig(model="x", backend="onnx", quantize=quantize), folder)
    started = time.perf_counter()
    logits = [r.logit for r in score_pairs(scorer, [Pair(q, p) for q, p in pairs])]
    return {"logits": logits, "seconds": time.perf_counter() - started, "rss_mb": _peak_rss_mb()}  # fmt: skip


def _peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM: unlike ru_maxrss, not inherited from the parent across fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def main() -> int:
    if sys.argv[1:2] == ["--score"]:
        print(json.dumps(score(Path(sys.argv[2]))))
        return 0
    if not (VARIANT / "model.onnx").is_file():
        build()
    folders = {"fp32": _export("none"), "int8, table int8": _export("int8"), "int8, table fp32": VARIANT}
    runs = {}
    for name, folder in folders.items():
        out = subprocess.run(
            [sys.executable, __file__, "--score", str(folder)], capture_output=True, text=True
        )
        runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print("| export | max abs Δscore vs fp32 | peak RSS MB | seconds | on disk MB |\n|---|---|---|---|---|")
    for name, run in runs.items():
        delta = max(
            abs(sigmoid(a) - sigmoid(b)) for a, b in zip(run["logits"], runs["fp32"]["logits"], strict=True)
        )
        disk = sum(p.stat().st_size for p in folders[name].iterdir()) / 2**20
        print(f"| {name} | {delta:.2e} | {run['rss_mb']:.0f} | {run['seconds']:.1f} | {disk:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
