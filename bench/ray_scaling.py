"""Ray engine scaling on this machine: the same scoring job with 1 and then 2 actors on the CPU.

Each actor gets one CPU (Ray sets its thread count to match), so 1 vs 2 actors compares one model
replica with two. Uses the tiny random model from tools/random_model.py by default; pass --model DIR
for another. Prints the wall time of each run and the speed-up.

    python bench/ray_scaling.py --copies 20
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None)
    parser.add_argument(
        "--copies", type=int, default=20, help="Copies of sample_data/mixed_pairs.jsonl to score."
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from tools.random_model import build_xlmr

            model = str(build_xlmr(Path(tmp) / "model", layers=4, hidden=128, heads=4, ffn=512))
        source = Path(tmp) / "in"
        source.mkdir()
        data = (ROOT / "sample_data" / "mixed_pairs.jsonl").read_bytes()
        for i in range(args.copies):  # several files, so Ray has several blocks to spread
            (source / f"part-{i:03d}.jsonl").write_bytes(data)
        pairs = data.count(b"\n") * args.copies
        times = {}
        for actors in (1, 2):
            out = Path(tmp) / f"out-{actors}"
            cmd = [sys.executable, "-m", "bge_rerank_cli", "score", "--engine", "ray", "--model", model]
            cmd += ["-o", str(out), str(source), "--actors", str(actors), "--cpus-per-actor", "1", "--quiet"]
            started = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            times[actors] = time.perf_counter() - started
            print(
                f"{actors} actor(s): {pairs} pairs in {times[actors]:.1f}s ({pairs / times[actors]:.0f} pairs/s)"
            )
        print(
            f"speed-up with 2 actors: {times[1] / times[2]:.2f}x (wall time includes Ray start and model loads)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
