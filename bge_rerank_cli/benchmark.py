"""`bge-rerank bench`: throughput, latency and peak memory of each precision and backend, measured.

Each setup (``torch-fp32``, ``onnx-int8``, ...) runs in a fresh child process, so its peak memory is
its own and one setup's warm caches do not flatter the next. A child loads the model, warms up on the
first request, then measures two things on the same requests: a batch job (every pair in one call, as
``bge-rerank score`` runs them) for pairs/s and tokens/s, and each request on its own (one query and
its candidates, as a service would see them) for latency p50/p95. Scores are compared with the first
setup's, so the accuracy a faster setup costs is measured on the same pairs. With a score cache, the
batch job then runs twice more through it (a first pass that stores what it does not know, and again
with every pair known), after the measurements above, which stay uncached.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

from .config import LoaderConfig, ScoreOptions
from .errors import ModelError, UsageError
from .records import Pair

if TYPE_CHECKING:
    from .ceilings import Ceiling, EncoderShape
    from .score_cache import StoreSpec

SETUPS: tuple[str, ...] = ("torch-fp32", "torch-fp16", "torch-bf16", "onnx-fp32", "onnx-int8")


@dataclass(frozen=True)
class Request:
    """One query and its candidates: the unit of latency."""

    query: str
    passages: tuple[str, ...]

    def pairs(self) -> list[Pair]:
        return [Pair(self.query, p) for p in self.passages]


@dataclass(frozen=True)
class CachePass:
    """The batch job once through the score cache: its speed, and the distinct pairs the cache knew
    (``hits``) and the model scored (``misses``)."""

    seconds: float = 0.0
    pairs_per_s: float = 0.0
    hits: int = 0
    misses: int = 0


@dataclass(frozen=True)
class CacheRuns:
    """A setup's batch job through the score cache: ``first`` (what the cache does not know yet is scored
    and stored) and ``again`` (every pair known); ``error`` when the store failed (both ran uncached)."""

    where: str
    first: CachePass
    again: CachePass
    error: str | None = None

    @staticmethod
    def from_dict(data: dict[str, Any]) -> CacheRuns:
        return CacheRuns(
            data["where"], CachePass(**data["first"]), CachePass(**data["again"]), data.get("error")
        )


@dataclass(frozen=True)
class Measurement:
    """What one setup measured (``error`` set instead when it could not run here)."""

    setup: str
    pairs: int = 0
    tokens: int = 0
    seconds: float = 0.0
    pairs_per_s: float = 0.0
    tokens_per_s: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    peak_rss_mb: float = 0.0
    peak_gpu_mb: float | None = None
    load_s: float = 0.0
    device: str = ""
    max_abs_delta: float | None = None  # sigmoid scores against the first setup
    attention_length: float = 0.0  # Σn²/Σn over the pairs' token counts (see ceilings.attention_length)
    flops_per_token: float | None = None  # the model's at that length; None when its shape is unknown
    ceiling: str | None = None  # the matching GEMM ceiling's kind: torch-fp32, onnxruntime-int8, ...
    pct_of_ceiling: float | None = None  # tokens/s x FLOPs per token / that ceiling's rate, in %
    error: str | None = None
    scores: tuple[float, ...] = ()
    score_cache: CacheRuns | None = None  # with --score-cache: the batch job through it, first and again


def setup_config(base: LoaderConfig, setup: str) -> LoaderConfig:
    """``base`` with the backend, precision and quantisation that ``setup`` names."""
    if setup not in SETUPS:
        raise UsageError(f"unknown setup {setup!r}; choose from {', '.join(SETUPS)}.")
    backend, precision = setup.split("-")
    if backend == "onnx":
        return replace(base, backend="onnx", dtype="auto", quantize="int8" if precision == "int8" else "none")
    return replace(base, backend="torch", dtype=precision, quantize="none")


def default_setups(device: str) -> list[str]:
    """The setups worth measuring on ``device`` with what is installed."""
    import importlib.util

    if device.startswith("cuda"):
        return ["torch-fp32", "torch-fp16", "torch-bf16"]
    setups = ["torch-fp32"]
    if cpu_has_bf16():
        setups.append("torch-bf16")
    if importlib.util.find_spec("onnxruntime") is not None:
        setups += ["onnx-fp32", "onnx-int8"]
    return setups


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX-512 BF16 or AMX); emulated bf16 is slower."""
    from .cpuinfo import collect_cpu

    return bool({"BF16", "AMX"} & set(collect_cpu().flags))


def demo_requests() -> list[Request]:
    """The demo's queries with their candidates: mixed languages and lengths, one long manual."""
    from .demo_data import DEMO_QUERIES

    return [Request(q.query, tuple(p.text for p in q.passages)) for q in DEMO_QUERIES]


def machine() -> str:
    from .config import cpu_threads
    from .cpuinfo import collect_cpu

    cpu = collect_cpu().name or platform.machine()
    return f"{cpu}, {cpu_threads()} CPU threads, Python {platform.python_version()}"


def run_setups(
    base: LoaderConfig,
    setups: Sequence[str],
    requests: Sequence[Request],
    *,
    timeout: float | None = None,
    cache: StoreSpec | None = None,
) -> list[Measurement]:
    """Measure each setup in its own child process; the first one is the accuracy reference. With
    ``cache``, each child also runs the batch job through that score cache (:class:`CacheRuns`)."""
    results: list[Measurement] = []
    for setup in setups:
        config = setup_config(base, setup)
        job = {"config": asdict(config), "setup": setup, "requests": [asdict(r) for r in requests],
               "cache": asdict(cache) if cache else None}  # fmt: skip
        try:
            if config.backend == "onnx":  # export (once, cached) first: its memory is not scoring's
                _child_run({**job, "prepare": True}, timeout)
            out = _child_run(job, timeout)
        except subprocess.TimeoutExpired:
            results.append(Measurement(setup, error=f"timed out after {timeout:.0f} s"))
            continue
        lines = out.stdout.strip().splitlines()
        if out.returncode != 0 or not lines:
            reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
            results.append(Measurement(setup, error=reason[:300]))
            continue
        data = json.loads(lines[-1])
        data["scores"] = tuple(data["scores"])
        data["score_cache"] = CacheRuns.from_dict(data["score_cache"]) if data.get("score_cache") else None
        results.append(Measurement(**data))
    return with_deltas(results)


def _child_run(job: dict[str, Any], timeout: float | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bge_rerank_cli.benchmark"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def with_deltas(results: Sequence[Measurement]) -> list[Measurement]:
    """Max |Δ sigmoid score| of each setup against the first one that ran."""
    ref = next((r for r in results if r.error is None), None)
    if ref is None:
        return list(results)
    return [
        r
        if r.error is not None
        else replace(r, max_abs_delta=max((abs(a - b) for a, b in zip(r.scores, ref.scores, strict=True)), default=0.0))
        for r in results
    ]  # fmt: skip


def measure_ceilings(
    base: LoaderConfig, setups: Sequence[str], device: str, *, timeout: float | None = 600
) -> list[Ceiling]:
    """This machine's GEMM ceilings that ``setups`` need, each with the backend's own kernel, on the
    model's layer-sized problem (tokens x hidden x ffn; 1024 x 4096 when its shape is unknown), measured
    in a fresh process (``bge-rerank bench`` does it before the setups and again after them)."""
    from .ceilings import kinds_for, measure_for_model

    return measure_for_model(base.model, kinds_for(setups), device, revision=base.revision,
                             cache_dir=base.cache_dir, timeout=timeout)  # fmt: skip


def with_ceilings(
    results: Sequence[Measurement], shape: EncoderShape | None, ceilings: Sequence[Ceiling]
) -> list[Measurement]:
    """Each measurement with the model's FLOPs per token at its attention length and its percentage of
    the matching ceiling (tokens/s x FLOPs per token / GEMM rate). Pure: tested on injected numbers."""
    from .ceilings import ceiling_kind, percent_for

    out = []
    for r in results:
        if r.error is not None or shape is None:
            out.append(r)
            continue
        per_token = shape.flops_per_token(r.attention_length)
        kind = ceiling_kind(r.setup)
        out.append(
            replace(
                r,
                flops_per_token=per_token,
                ceiling=kind,
                pct_of_ceiling=percent_for(r.setup, r.tokens_per_s, per_token, ceilings),
            )
        )
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks."""
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(q) - 1))]


def measure(
    config: LoaderConfig, setup: str, requests: Sequence[Request], cache: StoreSpec | None = None
) -> Measurement:
    """Run in the child: load, warm up, time the batch job and each request, read peak memory; then,
    with ``cache``, the batch job through the score cache twice (after the rest: it changes no figure
    above, and its memory is the store's)."""
    from .backends import load_scorer
    from .ceilings import attention_length
    from .engine import JobControl, score_pairs

    scorer = load_scorer(config)
    device = getattr(scorer, "device", "cpu")
    cuda = device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    pairs = [pair for r in requests for pair in r.pairs()]
    score_pairs(scorer, requests[0].pairs())  # warm-up: first-call allocations and kernel choice
    _sync(cuda)
    started = time.perf_counter()
    scored = score_pairs(scorer, pairs, control=JobControl())
    _sync(cuda)
    seconds = time.perf_counter() - started
    latencies = []
    for request in requests:
        t0 = time.perf_counter()
        score_pairs(scorer, request.pairs())
        _sync(cuda)
        latencies.append((time.perf_counter() - t0) * 1000)
    lengths = [len(e.ids) for e in scorer.encode(pairs)]
    tokens = sum(lengths)
    peak_gpu = None
    if cuda:
        import torch

        peak_gpu = torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return Measurement(
        setup=setup,
        pairs=len(pairs),
        tokens=tokens,
        seconds=seconds,
        pairs_per_s=len(pairs) / seconds,
        tokens_per_s=tokens / seconds,
        latency_p50_ms=percentile(latencies, 50),
        latency_p95_ms=percentile(latencies, 95),
        peak_rss_mb=rss,
        peak_gpu_mb=peak_gpu,
        load_s=getattr(scorer, "load_seconds", 0.0),
        device=f"{device} {scorer.describe().get('dtype', '')}".strip(),
        attention_length=attention_length(lengths),
        scores=tuple(s.score for s in scored),
        score_cache=None if cache is None else cached_runs(scorer, pairs, cache, cuda),
    )


def cached_runs(scorer: Any, pairs: Sequence[Pair], cache: StoreSpec, cuda: bool = False) -> CacheRuns:
    """The batch job over ``pairs`` through the score cache, twice: first (its misses scored and stored),
    then again (every pair known, unless the store failed: then ``error`` says why)."""
    from .jobs.settings import bind_cache

    store = cache.open()
    try:
        bound = bind_cache(store, scorer, ScoreOptions())
        first, again = (_cached_pass(scorer, pairs, bound, cuda) for _ in range(2))
    finally:
        store.close()
    return CacheRuns(store.where, first, again, bound.failed)


def _cached_pass(scorer: Any, pairs: Sequence[Pair], bound: Any, cuda: bool) -> CachePass:
    from .engine import JobControl, score_pairs

    control = JobControl(cache=bound)
    started = time.perf_counter()
    score_pairs(scorer, pairs, control=control)
    _sync(cuda)
    seconds = time.perf_counter() - started
    stats = control.stats
    return CachePass(seconds, len(pairs) / seconds, stats.cache_hits, stats.cache_misses)


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def _child() -> int:
    job = json.loads(sys.stdin.read())
    config = LoaderConfig(**job["config"])
    requests = [Request(r["query"], tuple(r["passages"])) for r in job["requests"]]
    from .score_cache import StoreSpec

    cache = StoreSpec(**job["cache"]) if job.get("cache") else None
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if job.get("prepare"):
            from .backends import load_scorer

            load_scorer(config)
            return 0
        result = measure(config, job["setup"], requests, cache)
    except (ModelError, UsageError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    payload: dict[str, Any] = asdict(result)
    print(json.dumps(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child())
