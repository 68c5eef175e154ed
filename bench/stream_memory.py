"""Memory stays flat however long the input: stream N lines through the job `bge-rerank score -o FILE` runs.

The model is replaced by a trivial arithmetic scorer (no torch), so what is measured is the
streaming pipeline itself: reading, parsing, batching, writing, checkpointing. Prints RSS before,
the peak during the run, and the growth; the target is growth <= 50 MB for 1,000,000 lines.

    python bench/stream_memory.py --lines 1000000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bge_rerank_cli import Reranker
from bge_rerank_cli.backends import Encoded
from bge_rerank_cli.config import LoaderConfig
from bge_rerank_cli.records import Pair


class ArithmeticScorer:
    """Logit from text lengths: costs nothing, so memory and I/O are all that is left to measure."""

    batch_size = 32
    batch_tokens = 32 * 512
    fill_tokens = 512
    config = LoaderConfig(model="arithmetic")
    device, dtype, load_seconds, max_length, model_limit = "cpu", "fp32", 0.0, 512, 512

    def describe(self) -> dict[str, str]:
        return {"model": "arithmetic", "backend": "none"}

    def encode(self, pairs: Sequence[Pair]) -> list[Encoded]:
        return [Encoded([len(p.query), len(p.passage)]) for p in pairs]

    def encode_windows(self, pairs: Sequence[Pair], *, overlap: int, max_chunks: int) -> list[list[Encoded]]:
        return [[e] for e in self.encode(pairs)]

    def logits(self, batch: Sequence[Encoded]) -> list[float]:
        return [(e.ids[1] % 17 - e.ids[0] % 5) / 4 for e in batch]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_input(path: Path, lines: int) -> None:
    with path.open("wb") as out:
        for i in range(lines):
            out.write(
                b'{"id": %d, "query": "what is deep learning %d", "passage": "deep learning trains neural '
                b'networks on data, passage number %d of the stream"}\n' % (i, i % 97, i)
            )


def run(path: Path, out: Path) -> None:
    Reranker(scorer=ArithmeticScorer()).score_file(str(path), str(out))  # the job `bge-rerank score` runs


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        write_input(source, 2_000)
        run(source, out)  # warm-up: imports, first allocations
        write_input(source, args.lines)
        before = rss_mb()
        peak = before
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_mb())
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        run(source, out)
        elapsed = time.perf_counter() - started
        done.set()
        sampler.join()
        written = sum(1 for _ in out.open("rb"))
        size = source.stat().st_size / 1e6
    growth = peak - before
    print(f"lines: {args.lines:,} ({size:.0f} MB of JSONL), written: {written:,}, time: {elapsed:.1f}s")
    print(
        f"RSS before: {before:.1f} MB, peak during run: {peak:.1f} MB, growth: {growth:.1f} MB (target <= 50 MB)"
    )
    print(f"python {sys.version.split()[0]}, pid {os.getpid()}")
    return 0 if growth <= 50 and written == args.lines else 1


if __name__ == "__main__":
    raise SystemExit(main())
