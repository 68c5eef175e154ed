"""`bge-rerank serve` with and without `--score-cache` on repeated requests: throughput and latency.

A query mix where about half the pairs repeat: each request is one of a few queries with half its
documents drawn from that query's small pool (popular chunks, met again and again) and half new. The
same requests, in the same order, are sent by N concurrent closed-loop clients (send, wait, send the
next) to a server on 127.0.0.1 started cache off, then cache on (an empty SQLite file); each server runs
alone and is stopped with SIGTERM before the next starts. Reports requests/s, pairs/s, p50/p95 latency,
the cache's hits and misses (from /metrics) and the largest score difference between the two servers.

    python bench/serve_cache.py                       # bench/speed.py's quick model, 120 requests
    python bench/serve_cache.py --requests 240 --concurrency 8 --model DIR
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def requests_mix(n: int, docs: int, seed: int = 5) -> list[dict]:
    from tools.random_model import _WORDS

    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))

    queries = [text(5, 15) for _ in range(6)]
    pools = [[text(20, 120) for _ in range(docs)] for _ in queries]
    out = []
    for _ in range(n):
        q = rng.randrange(len(queries))
        known = rng.sample(pools[q], docs // 2)
        fresh = [text(20, 120) for _ in range(docs - docs // 2)]
        out.append({"query": queries[q], "documents": [*known, *fresh], "return_documents": False})
    return out


def max_score_difference(first: list[bytes], second: list[bytes]) -> float:
    import json

    worst = 0.0
    for a, b in zip(first, second, strict=True):
        left = {r["index"]: r["relevance_score"] for r in json.loads(a)["results"]}
        right = {r["index"]: r["relevance_score"] for r in json.loads(b)["results"]}
        assert left.keys() == right.keys()
        worst = max([worst, *(abs(left[i] - right[i]) for i in left)])
    return worst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def load(port: int, requests: list[dict], concurrency: int) -> tuple[list[float], list[bytes], float]:
    import httpx

    latencies: list[float] = [0.0] * len(requests)
    answers: list[bytes] = [b""] * len(requests)
    queue = iter(range(len(requests)))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:

        async def worker() -> None:
            for i in queue:
                started = time.perf_counter()
                response = await client.post("/v1/rerank", json=requests[i])
                latencies[i] = time.perf_counter() - started
                response.raise_for_status()
                answers[i] = response.content

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, answers, time.perf_counter() - began


def serve(model: str, port: int, extra: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "bge_rerank_cli", "serve", "-m", model, "--port", str(port),
                             "--backend", "torch", *extra], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the server was not ready in 180 s")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--docs", type=int, default=20, help="Documents per request (half from a pool).")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--model", help="Model directory (default: bench/speed.py's quick XLM-R).")
    args = parser.parse_args()

    from speed import machine, model_dir

    from bge_rerank_cli.ceilings import isa_flags, isa_line

    model = args.model or str(model_dir(quick=True))
    requests = requests_mix(args.requests, args.docs)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-cache-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BGE_RERANK_CACHE": str(work / "own")}
    env.pop("BGE_RERANK_SCORE_CACHE", None)
    rows, answers = {}, {}
    for name, extra in (("cache off", []), ("cache on", ["--score-cache", str(work / "scores.sqlite")])):
        port = free_port()
        proc = serve(model, port, extra, env)
        try:
            asyncio.run(load(port, requests[:3], 1))  # warm-up: the first passes of a fresh process
            latencies, answers[name], seconds = asyncio.run(load(port, requests, args.concurrency))
            import httpx

            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        found = {k: sum(float(v) for v in re.findall(rf"^bge_rerank_cache_{k}_total{{[^}}]*}} (\S+)$", metrics,
                                                       re.M)) for k in ("hits", "misses")}  # fmt: skip
        pairs = len(requests) * args.docs
        ordered = sorted(latencies)
        rows[name] = (len(requests) / seconds, pairs / seconds, statistics.median(latencies) * 1000,
                      ordered[int(0.95 * (len(ordered) - 1))] * 1000, found)  # fmt: skip
    print(f"## serve with the score cache: {args.requests} requests x {args.docs} documents, "
          f"{args.concurrency} clients, about half the pairs repeated")  # fmt: skip
    print()
    print(f"{machine()}; {isa_line(isa_flags())}; model {model}; /v1/rerank; torch fp32")
    print()
    print("| server | requests/s | pairs/s | p50 ms | p95 ms | cache hits / misses (distinct pairs) |")
    print("|---|---|---|---|---|---|")
    for name, (rps, pps, p50, p95, found) in rows.items():
        cache = f"{found['hits']:.0f} / {found['misses']:.0f}" if name == "cache on" else "-"
        print(f"| {name} | {rps:.2f} | {pps:.0f} | {p50:.0f} | {p95:.0f} | {cache} |")
    off, on = rows["cache off"], rows["cache on"]
    print()
    print(f"- throughput with the cache: {on[1] / off[1]:.2f}x; p50 {on[2] / off[2]:.2f}x of cache off")
    worst = max_score_difference(answers["cache off"], answers["cache on"])
    same = worst <= 1e-5
    print(f"- largest |Δ relevance_score| between the two servers: {worst:.1e} (dynamic batching shares "
          f"forward passes differently run to run: fp32 rounding)")  # fmt: skip
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
