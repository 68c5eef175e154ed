"""Throughput and accuracy of bge-rerank against sentence-transformers, side by side, on one workload.

Builds a random-weight model once (throughput does not depend on weight values) and caches it under
bench/.cache: the exact bge-reranker-v2-m3 architecture (24 layers, hidden 1024, 16 heads, FFN 4096,
vocab 250002), or with --quick a scaled-down one. Generates a reproducible mixed-length workload
(queries 5-40 tokens, passages 20-1000 tokens, some duplicate pairs). Each engine runs in its own
fresh process (so peak RSS is its own), engines interleaved round by round, on the same pairs, batch
size and max length. Prints pairs/s, tokens/s, padding fraction, peak RSS, the ratio to
`CrossEncoder.predict` fp32 and max |Δscore| (sigmoid) against it, and writes docs/benchmarks.md.

    python bench/speed.py --quick              # scaled-down model, < 2 minutes
    python bench/speed.py --pairs 64           # full-size architecture (slow on CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "bench" / ".cache"
ENGINES = ("st-predict-fp32", "ours-torch-fp32", "ours-torch-bf16", "ours-onnx-fp32", "ours-onnx-int8")
REFERENCE = "st-predict-fp32"


def model_dir(quick: bool) -> Path:
    path = CACHE / ("quick-xlmr" if quick else "bge-reranker-v2-m3-shape")
    if not (path / "config.json").is_file():
        from tools.random_model import build_bge_m3_architecture, build_xlmr

        if quick:
            build_xlmr(
                path, layers=4, hidden=256, heads=4, ffn=1024, max_positions=1026, initializer_range=0.02
            )
        else:
            build_bge_m3_architecture(path)
    return path


def workload(pairs: int, seed: int = 7) -> list[tuple[str, str]]:
    """Queries of 5-40 words, passages of 20-1000 words (one token each in our vocabulary), ~10% repeats."""
    from tools.random_model import _WORDS

    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    while len(out) < pairs:
        if out and rng.random() < 0.1:
            out.append(rng.choice(out))
            continue
        q = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 40)))
        n = int(min(1000, max(20, rng.lognormvariate(5.0, 0.8))))
        out.append((q, " ".join(rng.choice(_WORDS) for _ in range(n))))
    return out


def worker(engine: str, model: str, pairs_file: str, batch_size: int, max_length: int) -> dict[str, object]:
    pairs = [tuple(p) for p in json.loads(Path(pairs_file).read_text())]
    os.environ["HF_HUB_OFFLINE"] = "1"
    if engine.startswith("st-"):
        import torch
        from sentence_transformers import CrossEncoder

        ce = CrossEncoder(model, device="cpu", max_length=max_length)
        ce.predict(pairs[:2], batch_size=batch_size, show_progress_bar=False)  # warm-up
        started = time.perf_counter()
        scores = ce.predict(
            pairs, batch_size=batch_size, show_progress_bar=False, activation_fn=torch.nn.Sigmoid()
        )
        elapsed = time.perf_counter() - started
        scores = [float(s) for s in scores]
        padding = _st_padding(ce, pairs, batch_size, max_length)
    else:
        from bge_rerank_cli.config import LoaderConfig
        from bge_rerank_cli.engine import JobControl, score_pairs, token_batches
        from bge_rerank_cli.loader import load_scorer
        from bge_rerank_cli.records import Pair

        _, backend, precision = engine.split("-")
        dtype = precision if backend == "torch" else "auto"
        quantize = "int8" if precision == "int8" else "none"
        config = LoaderConfig(
            model=model, device="cpu", dtype=dtype, batch_size=batch_size, max_length=max_length,  # type: ignore[arg-type]
            backend=backend, quantize=quantize,
        )  # fmt: skip
        scorer = load_scorer(config)
        items = [Pair(q, p) for q, p in pairs]
        score_pairs(scorer, items[:2])  # warm-up
        started = time.perf_counter()
        result = score_pairs(scorer, items, control=JobControl())
        elapsed = time.perf_counter() - started
        scores = [r.score for r in result]
        unique = list(dict.fromkeys(items))
        lengths = [len(e.ids) for e in scorer.encode(unique)]
        batches = token_batches(range(len(lengths)), lengths, scorer.batch_tokens)
        padded = sum(len(b) * lengths[b[0]] for b in batches)
        padding = 1 - sum(lengths) / padded
    tokens = _real_tokens(model, pairs, max_length)
    return {
        "engine": engine,
        "seconds": elapsed,
        "pairs": len(pairs),
        "tokens": tokens,
        "padding": padding,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "scores": scores,
    }


def _real_tokens(model: str, pairs: list[tuple[str, str]], max_length: int) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    return sum(len(tok(q, p, truncation=True, max_length=max_length)["input_ids"]) for q, p in pairs)


def _st_padding(ce: object, pairs: list[tuple[str, str]], batch_size: int, max_length: int) -> float:
    """sentence-transformers sorts by text length and batches a fixed count: its padded share."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ce.model.name_or_path)  # type: ignore[attr-defined]
    lengths = [len(tok(q, p, truncation=True, max_length=max_length)["input_ids"]) for q, p in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    padded = sum(
        len(order[s : s + batch_size]) * max(lengths[i] for i in order[s : s + batch_size])
        for s in range(0, len(order), batch_size)
    )
    return 1 - sum(lengths) / padded


def machine() -> str:
    cpu = platform.processor() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, torch {torch.__version__} ({cap} kernels), {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pairs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--pairs-file", help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="Do not rewrite docs/benchmarks.md.")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.pairs_file, args.batch_size, args.max_length)))
        return 0
    n = args.pairs or (48 if args.quick else 64)
    model = model_dir(args.quick)
    CACHE.mkdir(parents=True, exist_ok=True)
    pairs_file = CACHE / f"workload-{n}.json"
    pairs_file.write_text(json.dumps(workload(n)))
    engines = args.engines.split(",")
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for _ in range(args.rounds):
        for engine in engines:  # interleaved: one run of each engine per round
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                engine,
                "--model",
                str(model),
                "--pairs-file",
                str(pairs_file),
            ]
            cmd += ["--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
            out = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                env={**os.environ, "HF_HUB_OFFLINE": "1", "BGE_RERANK_CACHE": str(CACHE / "exports")},
            )
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                return 1
            runs[engine].append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {e: min(r, key=lambda x: x["seconds"]) for e, r in runs.items()}
    ref = best.get(REFERENCE)
    rows = []
    for engine, r in best.items():
        rate = r["pairs"] / r["seconds"]
        ratio = rate / (ref["pairs"] / ref["seconds"]) if ref else float("nan")
        delta = (
            max(abs(a - b) for a, b in zip(r["scores"], ref["scores"], strict=True)) if ref else float("nan")
        )
        rows.append((engine, rate, r["tokens"] / r["seconds"], r["padding"], r["peak_rss_mb"], ratio, delta))
    shape = (
        "scaled-down XLM-R (4 layers, hidden 256)" if args.quick else "bge-reranker-v2-m3 architecture (568M)"
    )
    header = (
        f"{shape}, random weights; {n} mixed-length pairs, batch size {args.batch_size}, max length "
        f"{args.max_length}, best of {args.rounds} interleaved round(s)\n{machine()}"
    )
    table = [
        "| engine | pairs/s | tokens/s | padding | peak RSS MB | × ST fp32 | max abs Δscore |",
        "|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| {e} | {p:.2f} | {t:.0f} | {pad:.0%} | {rss:.0f} | {x:.2f} | {d:.2e} |"
        for e, p, t, pad, rss, x, d in rows
    ]
    report = header + "\n\n" + "\n".join(table)
    print(report)
    if not args.no_write:
        _write_doc(("quick" if args.quick else "full"), report, " ".join(sys.argv[1:]))
    return 0


def _write_doc(mode: str, report: str, argv: str) -> None:
    doc = ROOT / "docs" / "benchmarks.md"
    doc.parent.mkdir(exist_ok=True)
    text = (
        doc.read_text()
        if doc.is_file()
        else "# Benchmarks\n\nWritten by `bench/speed.py`; each section is replaced by the run that produced it.\n"
    )
    start, end = f"<!-- {mode}:start -->", f"<!-- {mode}:end -->"
    section = f"{start}\n## {mode} run: `python bench/speed.py {argv}`\n\n{report}\n{end}"
    if start in text:
        head, _, rest = text.partition(start)
        text = head + section + rest.partition(end)[2]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
