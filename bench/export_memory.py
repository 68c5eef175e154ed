"""Peak memory of the one-time ONNX export, against the size of the weights it exports.

Runs each export (fp32, then int8) in a fresh process into a temporary BGE_RERANK_CACHE, so nothing is
cached from before, and reads that process's peak RSS from the kernel (``ru_maxrss`` of the child, via
``wait4``): the figure the kernel's out-of-memory killer goes by. Reports it with the size of the weight
files, the ratio, the wall time and the estimate bge-rerank's pre-export memory check makes (3x the
weights), and writes a docs/benchmarks.md section.

    python bench/export_memory.py                  # the full-size shape (bench/.cache); a few minutes
    python bench/export_memory.py --quick          # the scaled-down model, seconds
    python bench/export_memory.py --model DIR --quantize none
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

GIB = 2**30


def export_once(model: str, quantize: str) -> None:
    """The worker: export ``model`` (with ``quantize``) into $BGE_RERANK_CACHE, nothing else."""
    from bge_rerank_cli.backends.onnx_scorer import export, export_dir
    from bge_rerank_cli.config import LoaderConfig

    config = LoaderConfig(model=model, backend="onnx", quantize=quantize)  # type: ignore[arg-type]
    export(config, export_dir(config))


def measure(model: Path, quantize: str) -> dict[str, object]:
    """One export in a fresh process into an empty cache: its peak RSS against the weights' size."""
    from bge_rerank_cli.memory import EXPORT_FACTOR, run_peak, weight_bytes

    weights = weight_bytes(model) or 0
    with tempfile.TemporaryDirectory(prefix="bge-rerank-export-") as cache:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "BGE_RERANK_CACHE": cache}
        cmd = [sys.executable, __file__, "--worker", "--model", str(model), "--quantize", quantize]
        code, peak, seconds, _, tail = run_peak(cmd, env)
    if code != 0:
        raise SystemExit(f"the {quantize} export failed (exit {code}):\n{tail}")
    return {
        "quantize": quantize,
        "weights_bytes": weights,
        "peak_rss_bytes": peak,
        "ratio": peak / weights if weights else float("nan"),
        "seconds": seconds,
        "estimate_bytes": int(weights * EXPORT_FACTOR),
    }


def render(rows: list[dict[str, object]], model: Path, machine: str) -> str:
    lines = [
        f"ONNX export of {model.name} in a fresh process each, into an empty cache; peak RSS from the "
        f"kernel (ru_maxrss)\n{machine}\n",
        "| export | weights GiB | peak RSS GiB | × weights | seconds | pre-check's estimate GiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {'int8' if r['quantize'] == 'int8' else 'fp32'} | {r['weights_bytes'] / GIB:.2f} | "  # type: ignore[operator]
            f"{r['peak_rss_bytes'] / GIB:.2f} | {r['ratio']:.2f} | {r['seconds']:.0f} | "  # type: ignore[operator]
            f"{r['estimate_bytes'] / GIB:.2f} |"  # type: ignore[operator]
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="The scaled-down model (seconds).")
    parser.add_argument("--model", help="A model folder (default: speed.py's full-size or --quick model).")
    parser.add_argument(
        "--quantize", default="none,int8", help="Comma-separated exports to measure (none, int8)."
    )
    parser.add_argument("--no-write", action="store_true", help="Do not rewrite docs/benchmarks.md.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        export_once(args.model, args.quantize)
        return 0
    from speed import machine, model_dir, write_section

    model = Path(args.model) if args.model else model_dir(args.quick)
    rows = []
    for quantize in args.quantize.split(","):
        rows.append(measure(model, quantize))
        r = rows[-1]
        print(
            f"{quantize}: peak RSS {r['peak_rss_bytes'] / GIB:.2f} GiB, {r['ratio']:.2f}x the weights, "  # type: ignore[operator]
            f"{r['seconds']:.0f} s",
            file=sys.stderr,
        )
    report = render(rows, model, machine())
    print(report)
    if not args.no_write:
        mode = "export-memory" + ("-quick" if args.quick else "")
        argv = " ".join(sys.argv[1:])
        write_section(mode, f"{mode} run: `python bench/export_memory.py {argv}`", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
