"""Time to first score: whole cold processes of `bge-rerank score -q ... -p ... -p ...` (2 pairs, a cached
small model), several runs each, the median, with the import floors beside them.

Floors, each its own process: `python -c pass`, `import torch`, `import onnxruntime, tokenizers`, and the
imports the torch backend needs (torch, transformers, sentence_transformers as bge-rerank imports it).
What a user waits for beyond the floor is start-up that scoring itself does not need.

    python bench/startup.py                 # 5 runs each, the quick model of bench/speed.py
    python bench/startup.py --runs 9 --model DIR
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

FLOORS = {
    "python": "pass",
    "import torch": "import torch",
    "import onnxruntime, tokenizers": "import onnxruntime, tokenizers",
    "import torch, transformers": "import torch, transformers",
    "import sentence_transformers (as bge-rerank does)": (
        "from bge_rerank_cli.backends.deferred import deferred_imports\n"
        "with deferred_imports():\n    import sentence_transformers"
    ),
    "import sentence_transformers (plain)": "import sentence_transformers",
}


def timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {result.stderr.decode()[-500:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", help="A cached model directory (default: bench/speed.py's quick model).")
    args = parser.parse_args()
    if args.model:
        model = args.model
    else:
        from speed import model_dir

        model = str(model_dir(quick=True))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "BGE_RERANK_CACHE": str(ROOT / "bench" / ".cache" / "exports"),
    }
    score = [sys.executable, "-m", "bge_rerank_cli", "score", "-m", model, "-q", "what is deep learning?",
             "-p", "Deep learning trains neural networks.", "-p", "Apples are fruit.", "-f", "jsonl", "--quiet"]  # fmt: skip
    commands = {name: [sys.executable, "-c", code] for name, code in FLOORS.items()}
    commands["bge-rerank score (torch)"] = score
    commands["bge-rerank score (onnx)"] = [*score, "--backend", "onnx"]
    timed(commands["bge-rerank score (onnx)"], env)  # export once, outside the measurement
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):  # interleaved, so drift touches every command alike
        for name, cmd in commands.items():
            times[name].append(timed(cmd, env))
    median = {name: statistics.median(values) for name, values in times.items()}
    from bge_rerank_cli.cpuinfo import collect_cpu

    cpu = collect_cpu()
    print(
        f"{cpu.name}, {cpu.usable_cores} usable cores, {', '.join(cpu.flags)}; model {model}; {args.runs} runs each"
    )
    print("| process | median s | min s | max s |\n|---|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {median[name]:.2f} | {min(values):.2f} | {max(values):.2f} |")
    torch_excess = median["bge-rerank score (torch)"] - median["import torch"]
    onnx_excess = median["bge-rerank score (onnx)"] - median["import onnxruntime, tokenizers"]
    print(f"\ntorch backend: {torch_excess:.2f} s over `import torch`; onnx backend: {onnx_excess:.2f} s over "
          "`import onnxruntime, tokenizers`")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
