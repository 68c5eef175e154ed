"""What the score cache buys and costs: a whole `bge-rerank score` job run cache off, cache on and empty
(the first run), and cache on and warm (the rerun), each a cold process timed end to end.

Prints the seconds of each run, the first run's cost over cache off (target: at most 5%), the rerun's
speed-up over the first run (target: at least 20x), and checks that the three outputs are byte-identical.
Run it on a quiet machine: the rounds interleave off and on, the best of each counts.

    python bench/score_cache.py                      # 20,000 pairs, bench/speed.py's quick model
    python bench/score_cache.py --pairs 2000 --rounds 1
    python bench/score_cache.py --model DIR --score-cache redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument(
        "--rounds", type=int, default=2, help="Interleaved off/first/rerun rounds; best counts."
    )
    parser.add_argument("--model", help="Model directory (default: bench/speed.py's quick XLM-R).")
    parser.add_argument(
        "--score-cache", default=None, help="Cache to measure (default: a fresh SQLite file)."
    )
    args = parser.parse_args()

    from speed import machine, model_dir, query_workload
    from startup import timed

    from bge_rerank_cli.ceilings import isa_flags, isa_line

    model = args.model or str(model_dir(quick=True))
    work = Path(tempfile.mkdtemp(prefix="bench-score-cache-"))
    pairs = work / "pairs.jsonl"
    with pairs.open("w", encoding="utf-8") as out:
        for i, (q, p) in enumerate(query_workload(args.pairs, docs=20, passage_words=(20, 120))):
            out.write(json.dumps({"id": i, "query": q, "passage": p}) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BGE_RERANK_CACHE": str(work / "own")}
    env.pop("BGE_RERANK_SCORE_CACHE", None)
    base = [sys.executable, "-m", "bge_rerank_cli", "score", str(pairs), "-m", model, "--quiet",
            "--backend", "torch"]  # fmt: skip

    times: dict[str, list[float]] = {"off": [], "first": [], "rerun": []}
    outputs: dict[str, bytes] = {}
    for round_ in range(args.rounds):
        cache = args.score_cache or str(work / f"scores-{round_}.sqlite")
        if args.score_cache:
            subprocess.run([sys.executable, "-m", "bge_rerank_cli", "score-cache", "clear", "--score-cache",
                            cache], capture_output=True, env=env, cwd=ROOT, check=True)  # fmt: skip
        for name, extra in (
            ("off", []),
            ("first", ["--score-cache", cache]),
            ("rerun", ["--score-cache", cache]),
        ):
            target = work / f"{name}.jsonl"
            times[name].append(timed([*base, *extra, "-o", str(target)], env))
            outputs[name] = target.read_bytes()
            print(f"round {round_ + 1}: {name:<6} {times[name][-1]:7.2f} s", file=sys.stderr)
    identical = outputs["off"] == outputs["first"] == outputs["rerun"]
    best = {name: min(values) for name, values in times.items()}
    overhead = best["first"] / best["off"] - 1
    speedup = best["first"] / best["rerun"]
    print(f"## score cache: {args.pairs:,} pairs, whole `bge-rerank score` processes")
    print()
    print(f"{machine()}; {isa_line(isa_flags())}; model {model}; cache "
          f"{args.score_cache or 'SQLite (default kind)'}; best of {args.rounds} interleaved round(s)")  # fmt: skip
    print()
    print("| run | seconds | pairs/s |")
    print("|---|---|---|")
    for name, label in (("off", "cache off"), ("first", "cache on, empty (first run)"),
                        ("rerun", "cache on, warm (rerun)")):  # fmt: skip
        print(f"| {label} | {best[name]:.2f} | {args.pairs / best[name]:,.0f} |")
    print()
    print(f"- first run's cost over cache off: {overhead:+.1%} (target: at most +5%)")
    print(f"- rerun's speed-up over the first run: {speedup:.1f}x (target: at least 20x)")
    print(f"- outputs byte-identical (off, first, rerun): {'yes' if identical else 'NO'}")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
