"""`bge-rerank serve` against infinity-emb over HTTP on loopback: a bounded closed-loop load generator.

Each server runs as its own subprocess on 127.0.0.1, alone (stopped with SIGTERM before the next one
starts, so they never share the cores), serving the same model directory: ours with torch fp32 (like for
like) and with ONNX int8, and infinity-emb 0.0.78 (torch engine, fp32, no BetterTransformer, no
torch.compile) from its own venv under bench/.cache/infinity-venv, created on first use. Every server gets
the same reproducible requests (a query of 5-40 words and --docs passages of mixed length each), sent by
N concurrent clients, each a closed loop (send, wait for the answer, send the next), for each
--concurrency. Before measuring: wait for readiness (ours GET /ready, infinity GET /health), then a few
warm-up requests. Reports requests/s, pairs/s, p50/p95/p99 latency and errors per server and
concurrency, the ratio to the peer, and the largest |Δ relevance_score| against the peer on the same
requests (all apply a sigmoid to the logit). Each row also gives tokens/s (the requests' tokens, counted
with the model's tokenizer) as % of the matching GEMM ceiling (bge_rerank_cli/ceilings.py: torch fp32
linear, onnxruntime fp32/int8 MatMul on a layer-sized problem, measured before and after the servers,
best of), and the report says what 1.5x the peer's fp32 throughput at the highest concurrency would take
of the fp32 ceilings.

If infinity-emb cannot be installed or does not serve, the peer is sentence-transformers
`CrossEncoder.rank` behind a minimal FastAPI app (bench/serve_infinity_app.py, in this venv), and the
report says why.

    python bench/serve.py --quick             # scaled-down XLM-R, 48 requests: ~5 minutes on 2 cores
    python bench/serve.py --json bench/.cache/serve-full.json
        # bge-reranker-v2-m3 architecture (568M, random weights), 16 requests: ~1 hour on 2 cores
        # (at 16 clients all 320 pairs are in flight at once; the first run also builds the model
        # and its int8 ONNX export)
    python bench/serve.py --model DIR --requests 96 --concurrency 1,4,16,32 --rounds 2
    python bench/serve.py --quick --servers ours-torch-fp32,st-fastapi-fp32   # the stand-in peer
    python bench/serve.py --quick --ray       # one process vs Ray Serve with 1 and 2 replicas

On a machine that other work shares, pass --rounds 2 (servers in alternating order, best of): torch's
compute threads slow down sharply when another process takes one of the cores.

Everything is bounded: --request-timeout per request, --start-timeout per server start, --time-limit for
the whole run (past it no new request is sent and the servers left are not started). Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from speed import CACHE, _token_range, model_dir, peer_venv, workload, write_section  # noqa: E402

SERVERS = ("ours-torch-fp32", "ours-onnx-int8", "infinity-torch-fp32")
RAY_SERVERS = (
    "ours-torch-fp32",
    "ours-ray-1",
    "ours-ray-2",
)  # --ray: 1 and 2 Ray Serve replicas vs one process
KNOWN = (*SERVERS, "ours-onnx-fp32", "st-fastapi-fp32", "ours-ray-1", "ours-ray-2")
PEERS = ("infinity-torch-fp32", "st-fastapi-fp32")  # the first one run is the peer of every ratio
INFINITY_VENV = CACHE / "infinity-venv"
INFINITY_VERSION = "0.0.78"
INFINITY_REQUIREMENTS = [
    f"infinity-emb[server,torch]=={INFINITY_VERSION}",
    "sentence-transformers<4",
    "transformers<5",
    "numpy<2",
    "click<8.2",
    "typer<0.13",
    "uvicorn<0.33",
]  # no optimum: infinity's 0.0.78 BetterTransformer path needs optimum 1.x, which we switch off
LOGS = CACHE / "serve-logs"
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass
class Spec:
    """How to start one server and talk to it."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    ready_path: str
    rerank_path: str
    port: int


@dataclass
class Phase:
    """One concurrency level against one server."""

    concurrency: int
    seconds: float
    ok: int
    errors: list[str]
    latencies_ms: list[float]
    scores: dict[int, list[float]] = field(default_factory=dict)
    cut_short: bool = False
    server_cpu_seconds: float | None = None


def infinity_python(rebuild: bool = False, python_path: str | None = None) -> tuple[str | None, str]:
    """The Python of infinity-emb's own venv, created on first use (it needs transformers < 5, numpy < 2,
    this project transformers 5.24+). Returns (python, "") or (None, why not)."""
    probe_code = "import infinity_emb.cli, sentence_transformers, torch"
    if python_path:
        given = sys.executable if python_path == "current" else python_path
        out = subprocess.run([given, "-c", probe_code], capture_output=True, text=True)
        if out.returncode != 0:
            return None, f"infinity-emb does not import in {given}: {_last(out.stderr)}"
        return given, ""
    return peer_venv(INFINITY_VENV, INFINITY_REQUIREMENTS, probe_code, "infinity-emb", rebuild)


def _last(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("WARNING: Location")]
    return (lines or ["?"])[-1][:300]


def versions(python: str, packages: tuple[str, ...]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError:\n"
        "        pass\n"
        "print(json.dumps(out))"
    )
    out = subprocess.run([python, "-c", code, *packages], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec(name: str, model: Path, args: argparse.Namespace, python: str | None) -> Spec:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if name.startswith("ours-"):
        cmd = [sys.executable, "-m", "bge_rerank_cli", "serve", "-m", str(model), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--device", "cpu", "--batch-size", str(args.batch_size)]
        cmd += ["--max-length", str(args.max_length), "--max-docs", str(max(1000, args.docs))]
        cmd += ["--timeout", str(args.request_timeout), "--drain-seconds", "5"]
        if name == "ours-torch-fp32":
            cmd += ["--backend", "torch", "--dtype", "fp32"]
        elif name.startswith("ours-ray-"):  # the same torch fp32 app as a Ray Serve deployment
            replicas = int(name.rsplit("-", 1)[1])
            cpus = max(0.5, (os.cpu_count() or 2) / replicas)
            cmd += ["--backend", "torch", "--dtype", "fp32", "--ray", "--replicas", str(replicas)]
            cmd += ["--replica-cpus", f"{cpus:g}"]
        else:
            cmd += ["--backend", "onnx", "--quantize", "int8" if name.endswith("int8") else "none"]
        env["BGE_RERANK_CACHE"] = str(CACHE / "exports")
        return Spec(name, cmd, env, "/ready", "/v1/rerank", port)
    if name.startswith("infinity-"):
        assert python is not None
        cmd = [python, "-m", "infinity_emb.cli", "v2", "--model-id", str(model)]
        cmd += ["--served-model-name", "bench-model", "--engine", "torch", "--device", "cpu"]
        cmd += ["--port", str(port), "--host", "127.0.0.1", "--batch-size", str(args.batch_size)]
        cmd += ["--dtype", "float32", "--no-bettertransformer", "--no-compile", "--no-vector-disk-cache"]
        # No built-in warm-up: every server gets the same --warmup requests instead. infinity's own warms up
        # at long shapes (the full-size model's 8192-token limit) and ran past 15 minutes on 2 cores.
        cmd += ["--no-model-warmup"]
        cmd += ["--log-level", "warning"]
        env.update(DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="0")  # no telemetry calls
        return Spec(name, cmd, env, "/health", "/rerank", port)
    cmd = [sys.executable, "-m", "uvicorn", "serve_infinity_app:app", "--app-dir", str(ROOT / "bench")]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    env.update(STANDIN_MODEL=str(model), STANDIN_BATCH_SIZE=str(args.batch_size),
               STANDIN_MAX_LENGTH=str(args.max_length))  # fmt: skip
    return Spec(name, cmd, env, "/ready", "/v1/rerank", port)


def requests_of(n: int, docs: int, seed: int, passage_words: tuple[int, int]) -> list[dict]:
    """``n`` rerank requests of ``docs`` documents each: speed.py's generator (queries 5-40 words,
    passages uniformly ``passage_words`` long, one token per word), no repeats; each request's query is
    the query of its first pair."""
    pairs = workload(n * docs, seed=seed, passage_tokens=passage_words, repeats=0.0)
    return [
        {"query": pairs[i * docs][0], "documents": [p for _, p in pairs[i * docs : (i + 1) * docs]]}
        for i in range(n)
    ]


def request_tokens(model: Path, requests: list[dict], max_length: int) -> list[list[int]]:
    """Each request's pairs' token counts as every server runs them: the model's own tokenizer on
    (query, document), truncated at ``max_length``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    out = []
    for r in requests:
        queries = [r["query"]] * len(r["documents"])
        encoded = tok(queries, r["documents"], truncation=True, max_length=max_length)
        out.append([len(ids) for ids in encoded["input_ids"]])
    return out


def measure_ceilings(model: Path, names: list[str]) -> list[dict]:
    """The GEMM ceilings the servers' engines need (torch fp32 linear, onnxruntime MatMul), on the
    model's layer-sized problem, in a fresh process: bench/speed.py's measurement."""
    from bge_rerank_cli.ceilings import kinds_for, measure_for_model

    return [c.to_dict() for c in measure_for_model(str(model), kinds_for(names), "cpu")]


def body(request: dict) -> bytes:
    """The same bytes for every server: infinity's shape, which ours accepts on /v1/rerank too."""
    return json.dumps({**request, "return_documents": False, "model": "bench-model"}).encode()


def scores_of(response: dict, docs: int) -> list[float]:
    """Relevance scores back in document order (every server sorts them best first)."""
    out = [math.nan] * docs
    for r in response["results"]:
        out[int(r["index"])] = float(r["relevance_score"])
    return out


async def run_phase(
    url: str, path: str, bodies: list[bytes], docs: int, concurrency: int, timeout: float, deadline: float
) -> Phase:
    """``concurrency`` closed-loop clients share the requests in order until none is left or the
    deadline passes (then no new one is sent)."""
    import httpx

    n = len(bodies)
    latencies: list[float] = []
    errors: list[str] = []
    scores: dict[int, list[float]] = {}
    cursor = 0
    cut = False
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def loop() -> None:
            nonlocal cursor, cut
            while cursor < n:
                if time.monotonic() > deadline:
                    cut = True
                    return
                i = cursor
                cursor += 1
                started = time.perf_counter()
                try:
                    r = await client.post(path, content=bodies[i], headers=JSON_HEADERS)
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                elapsed = time.perf_counter() - started
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                    continue
                latencies.append(elapsed * 1000)
                scores[i] = scores_of(r.json(), docs)

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Phase(concurrency, seconds, len(latencies), errors, latencies, scores, cut)


def wait_ready(spec: Spec, proc: subprocess.Popen, log: Path, limit: float) -> str:
    """Poll the readiness route until 200; returns "" or why not (the process died, or time ran out)."""
    import httpx

    deadline = time.monotonic() + limit
    url = f"http://127.0.0.1:{spec.port}{spec.ready_path}"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with {proc.returncode} before it was ready: {_tail(log)}"
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return ""
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    return f"not ready after {limit:.0f} s: {_tail(log)}"


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "?"
    return " | ".join(line.strip()[:200] for line in text[-lines:])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads) so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float | None:
    """The server process's peak resident memory (VmHWM), read before it stops."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def stop(proc: subprocess.Popen) -> int | None:
    """SIGTERM, then (after 30 s) SIGKILL to the server's own process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=30)


def measure(
    spec: Spec, bodies: list[bytes], warmups: list[bytes], args: argparse.Namespace, deadline: float
) -> dict:
    """Start one server, wait for it, warm it up, run every concurrency level, stop it."""
    import httpx

    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{spec.name}.log"
    result: dict = {"server": spec.name, "cmd": spec.cmd, "log": str(log.relative_to(ROOT))}
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(spec.cmd, stdout=out, stderr=subprocess.STDOUT, env=spec.env, cwd=ROOT,
                                start_new_session=True)  # fmt: skip
    try:
        why = wait_ready(spec, proc, log, min(args.start_timeout, max(1.0, deadline - time.monotonic())))
        if why:
            result["error"] = why
            return result
        result["ready_seconds"] = time.monotonic() - started
        url = f"http://127.0.0.1:{spec.port}"
        warm: list[float] = []
        for payload in warmups:
            t0 = time.perf_counter()
            try:
                r = httpx.post(url + spec.rerank_path, content=payload, headers=JSON_HEADERS,
                               timeout=args.request_timeout)  # fmt: skip
            except httpx.HTTPError as exc:
                result["error"] = f"warm-up request failed: {type(exc).__name__}: {exc}"[:300]
                return result
            if r.status_code != 200:
                result["error"] = f"warm-up request: HTTP {r.status_code}: {r.text[:300]}"
                return result
            warm.append((time.perf_counter() - t0) * 1000)
        result["warmup_ms"] = warm
        phases = []
        for c in args.concurrency:
            if time.monotonic() > deadline:
                break
            cpu_before = cpu_seconds(proc.pid)
            phase = asyncio.run(
                run_phase(url, spec.rerank_path, bodies, args.docs, c, args.request_timeout, deadline)
            )
            cpu_after = cpu_seconds(proc.pid)
            if cpu_before is not None and cpu_after is not None:
                phase.server_cpu_seconds = cpu_after - cpu_before
            phases.append(phase)
            if args.progress:
                rate = phase.ok / phase.seconds if phase.seconds else 0.0
                print(f"{spec.name} c={c}: {rate:.2f} requests/s, {len(phase.errors)} errors, "
                      f"{phase.seconds:.1f} s", file=sys.stderr)  # fmt: skip
        result["phases"] = [phase.__dict__ for phase in phases]
        result["peak_rss_mb"] = peak_rss_mb(proc.pid)
    finally:
        result["exit_code"] = stop(proc)
    return result


def prepare_exports(model: Path, names: list[str], max_length: int, seconds: float) -> None:
    """Export (and quantize) the ONNX models our onnx servers load, beforehand, in a separate process."""
    quantize = [("int8" if n.endswith("int8") else "none") for n in names if n.startswith("ours-onnx-")]
    if not quantize:
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BGE_RERANK_CACHE": str(CACHE / "exports")}
    cmd = [sys.executable, str(ROOT / "bench" / "speed.py"), "--worker", "prepare", "--model", str(model)]
    cmd += ["--pairs-file", ",".join(dict.fromkeys(quantize)), "--max-length", str(max_length)]
    subprocess.run(cmd, env=env, check=True, timeout=max(60.0, seconds), stdout=subprocess.DEVNULL)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def max_delta(a: dict[int, list[float]], b: dict[int, list[float]]) -> float | None:
    deltas = [
        abs(x - y) for i in a.keys() & b.keys() for x, y in zip(a[i], b[i], strict=True) if x == x and y == y
    ]
    return max(deltas) if deltas else None


def first_scores(result: dict) -> dict[int, list[float]]:
    """Each request's scores from the first phase that answered it."""
    out: dict[int, list[float]] = {}
    for phase in result.get("phases", []):
        for i, s in phase["scores"].items():
            out.setdefault(int(i), s)
    return out


def spread(runs: list[dict]) -> float | None:
    """The largest change of one server's scores on the same request across its concurrency levels and
    rounds (batch composition and padding differ)."""
    phases = [p for r in runs for p in r.get("phases", [])]
    if len(phases) < 2:
        return None
    first = {int(i): s for i, s in phases[0]["scores"].items()}
    each = [max_delta(first, {int(i): s for i, s in p["scores"].items()}) for p in phases[1:]]
    deltas = [d for d in each if d is not None]
    return max(deltas) if deltas else None


def machine() -> str:
    from bge_rerank_cli.cpuinfo import collect_cpu

    cpu = collect_cpu()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    flags = ", ".join(cpu.flags) or "no AVX2"
    return (
        f"{cpu.name or 'CPU'}, {cpu.cores} cores ({cpu.usable_cores} usable), {flags}, {mem:.0f} GiB RAM, "
        f"Python {platform.python_version()}"
    )


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def _ms(x: float) -> str:
    return "-" if x != x else f"{x:.0f}"


def _rate(phase: dict) -> float:
    return phase["ok"] / phase["seconds"] if phase["seconds"] else 0.0


@dataclass
class Work:
    """What the requests cost in FLOPs and what the machine can do: each request's token counts, the
    model's FLOPs per token and the GEMM ceilings measured before and after the servers."""

    tokens: list[list[int]]
    shape: Any = None  # bge_rerank_cli.ceilings.EncoderShape
    before: list[Any] = field(default_factory=list)  # bge_rerank_cli.ceilings.Ceiling
    after: list[Any] = field(default_factory=list)

    @classmethod
    def of(cls, meta: dict) -> Work:
        from bge_rerank_cli.ceilings import from_dict, read_shape

        before, after = (
            [from_dict(c) for c in meta.get(k, [])] for k in ("ceilings_before", "ceilings_after")
        )
        shape = read_shape(meta["model_dir"]) if meta.get("model_dir") else None
        return cls(meta.get("tokens", []), shape, before, after)

    @functools.cached_property
    def ceilings(self) -> list[Any]:
        """Per kind, the better of the two measurements."""
        from bge_rerank_cli.ceilings import best_of

        return best_of(self.before, self.after)

    @functools.cached_property
    def flops_per_token(self) -> float | None:
        from bge_rerank_cli.ceilings import attention_length

        if self.shape is None or not self.tokens:
            return None
        return self.shape.flops_per_token(attention_length(n for r in self.tokens for n in r))

    def tokens_per_s(self, phase: dict) -> float | None:
        """The tokens of the requests a phase answered, per second of it."""
        if not self.tokens or not phase["seconds"]:
            return None
        return sum(sum(self.tokens[int(i)]) for i in phase["scores"]) / phase["seconds"]

    def percent(self, server: str, tokens_per_s: float | None) -> float | None:
        from bge_rerank_cli.ceilings import percent_for

        fpt = self.flops_per_token
        if tokens_per_s is None or fpt is None:
            return None
        engine = "ours-torch-fp32" if server.startswith("ours-ray-") else server  # the same app on Ray Serve
        return percent_for(engine, tokens_per_s, fpt, self.ceilings)

    def describe(self, peer: str | None, peer_best: dict[int, dict]) -> list[str]:
        """The ceilings, how % of ceiling is counted, and what 1.5x the peer's fp32 throughput at the
        highest concurrency would take of the torch fp32 ceiling."""
        from bge_rerank_cli.ceilings import ceiling_lines, isa_flags, isa_line

        fpt = self.flops_per_token
        if fpt is None or not self.ceilings:
            return []
        lines = [isa_line(isa_flags()), *ceiling_lines(self.before, self.after, "servers")]
        per_request = sum(map(sum, self.tokens)) / len(self.tokens)
        lines.append(
            f"% of ceiling: tokens/s x FLOPs per token / the matching ceiling (the servers' torch fp32 to torch's "
            f"linear, ONNX to onnxruntime's MatMul); {per_request:.0f} tokens per request, "
            f"{fpt / 1e9:.3f} GFLOP per token ({self.shape.linear_flops() / 1e9:.3f} G projections and "
            f"FFN + attention at the pairs' token-weighted mean length)"
        )
        if peer and peer_best:
            from bge_rerank_cli.ceilings import CEILING_LABELS, percent_of_ceiling

            c = max(peer_best)
            target = 1.5 * (self.tokens_per_s(peer_best[c]) or 0.0)
            needs = [
                f"{percent_of_ceiling(target, fpt, ceiling.rate):.0f}% of the "
                f"{CEILING_LABELS.get(ceiling.kind, ceiling.kind)} ceiling"
                for ceiling in self.ceilings
                if ceiling.kind.endswith("fp32") and ceiling.rate > 0
            ]
            if needs:
                lines.append(
                    f"1.5x {peer}'s throughput at {c} clients, in fp32 (the same FLOPs per request), would be "
                    f"{target * fpt / 1e9:.0f} GFLOP/s: " + " and ".join(needs)
                )
        return lines


def best_phases(runs: list[dict]) -> dict[int, dict]:
    """Per concurrency, the phase with the most requests/s among a server's rounds."""
    best: dict[int, dict] = {}
    for run in runs:
        for p in run.get("phases", []):
            if p["concurrency"] not in best or _rate(p) > _rate(best[p["concurrency"]]):
                best[p["concurrency"]] = p
    return best


def render(results: list[dict], skipped: dict[str, str], args: argparse.Namespace, meta: dict) -> str:
    servers = {
        name: [r for r in results if r["server"] == name]
        for name in dict.fromkeys(r["server"] for r in results)
    }
    peers = ("ours-torch-fp32",) if getattr(args, "ray", False) else PEERS  # --ray: against one process
    peer_name = next((n for n in servers if n in peers and best_phases(servers[n])), None)
    peer_best = best_phases(servers[peer_name]) if peer_name else {}
    rounds = max((r.get("round", 1) for r in results), default=1)
    work = Work.of(meta)
    lines = [
        f"| server | clients | requests/s | pairs/s | tokens/s | % of ceiling | p50 ms | p95 ms | p99 ms "
        f"| server CPU ms/request | errors | × {peer_name or 'peer'} |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in servers.items():
        for c, p in sorted(best_phases(runs).items()):
            rate, lat = _rate(p), p["latencies_ms"]
            ratio = rate / _rate(peer_best[c]) if c in peer_best and _rate(peer_best[c]) else math.nan
            cpu = p.get("server_cpu_seconds")
            cpu_ms = "-" if cpu is None or not p["ok"] else f"{cpu / p['ok'] * 1000:.0f}"
            cut = " (cut short)" if p["cut_short"] else ""
            tokens_s = work.tokens_per_s(p)
            pct = work.percent(name, tokens_s)
            lines.append(
                f"| {name} | {c} | {rate:.2f} | {rate * args.docs:.1f} | "
                f"{'-' if tokens_s is None else f'{tokens_s:.0f}'} | {'-' if pct is None else f'{pct:.0f}%'} | "
                f"{_ms(percentile(lat, 0.5))} | {_ms(percentile(lat, 0.95))} | {_ms(percentile(lat, 0.99))} | "
                f"{cpu_ms} | "
                f"{len(p['errors'])}{cut} | {'-' if ratio != ratio else f'{ratio:.2f}'} |"
            )
    ran = {name: [r for r in runs if r.get("phases")] for name, runs in servers.items()}
    ref = first_scores(ran[peer_name][0]) if peer_name else {}
    lines += [
        "",
        f"| server | ready after s | warm-up ms (first, then) | peak RSS MB | max abs Δscore vs {peer_name or 'peer'} "
        "| max abs Δscore across its runs |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in servers.items():
        if not ran[name]:
            lines.append(f"| {name} | failed: {runs[-1].get('error', '?')} | | | | |")
            continue
        first = ran[name][0]
        delta = max_delta(first_scores(first), ref) if peer_name and name != peer_name else None
        warm_text = ", ".join(f"{w:.0f}" for w in first.get("warmup_ms", [])) or "-"
        rss = [r["peak_rss_mb"] for r in ran[name] if r.get("peak_rss_mb") is not None]
        own = spread(ran[name])
        failed = sum(1 for r in runs if not r.get("phases"))
        lines.append(
            f"| {name} | {first.get('ready_seconds', math.nan):.1f} | {warm_text} | "
            f"{f'{max(rss):.0f}' if rss else '-'} | {'-' if delta is None else f'{delta:.2e}'} | "
            f"{'-' if own is None else f'{own:.2e}'}{f' ({failed} run(s) failed)' if failed else ''} |"
        )
    for name, why in skipped.items():
        lines.append(f"| {name} | not run: {why} | | | | |")
    if rounds > 1:
        per_round = "; ".join(
            f"{name} c={c} "
            + ", ".join(f"{_rate(p):.2f}" for r in runs for p in r.get("phases", []) if p["concurrency"] == c)
            for name, runs in ran.items()
            for c in sorted(best_phases(runs))
        )
        lines.append(f"\nrequests/s per round: {per_round}")
    shape = (
        "scaled-down XLM-R (4 layers, hidden 256), random weights"
        if args.quick
        else (
            f"model {args.model}" if args.model else "bge-reranker-v2-m3 architecture (568M), random weights"
        )
    )
    lo, hi = args.passage_words
    peer_versions = ", ".join(
        f"{k} {v}" for k, v in meta.get("peer_versions", {}).get(peer_name or "", {}).items()
    )
    header = (
        f"{shape}; {args.requests} requests x {args.docs} documents (queries 5-40 words, passages {lo}-{hi} "
        f"words, seed {args.seed}), the same requests for every server, each concurrency a closed loop of "
        f"N clients over all of them after {args.warmup} warm-up request(s); batch size {args.batch_size}, "
        f"max length {args.max_length}, loopback HTTP, one server at a time\n"
        f"{machine()}; torch {_version('torch')}, onnxruntime {_version('onnxruntime')}, "
        f"bge-rerank-cli {_version('bge-rerank-cli')}"
        + (f"; peer: {peer_versions}" if peer_versions else "")
        + f"\ncommand: `python bench/serve.py {' '.join(args.argv)}`"
    )
    notes = (
        f"\n\nEach row: the best of {rounds} round(s) (servers in alternating order). ratio: requests/s over the "
        "peer's at the same concurrency. server CPU: the server process's user+system CPU time over the "
        "phase per request (compute threads that busy-wait count too, so it rises when other processes share the cores). Δscore: sigmoid "
        "relevance scores on the same requests (the first concurrency that answered each). p99 of a few "
        "dozen requests is close to the slowest one."
    )
    if getattr(args, "ray", False):
        notes += (
            " ours-ray-N: the same torch fp32 app as a Ray Serve deployment of N replicas, each reserving "
            "cores/N CPUs, behind Ray Serve's proxy; its server CPU and peak RSS are the driver process's "
            "only (the replicas and the proxy are Ray worker processes), and its % of ceiling is against "
            "the torch fp32 ceiling, the same as the one process's."
        )
    return header + "\n" + "\n".join(work.describe(peer_name, peer_best)) + "\n\n" + "\n".join(lines) + notes


def _write_doc(mode: str, report: str) -> None:
    if mode.startswith("serve-ray"):
        title = f"{mode}: `bge-rerank serve --ray` (Ray Serve, 1 and 2 replicas) against one process"
    else:
        title = f"{mode}: `bge-rerank serve` against infinity-emb over HTTP"
    write_section(mode, title, report)


def _reused(args: argparse.Namespace, names: list[str]) -> list[dict]:
    """Results of servers not run now, from an earlier --json of the same workload (--reuse FILE)."""
    if not args.reuse:
        return []
    earlier = json.loads(Path(args.reuse).read_text())
    mine = [a for a in args.argv if not a.startswith(("--servers", "--reuse", "--json"))]
    theirs = [a for a in earlier["argv"] if not a.startswith(("--servers", "--reuse", "--json"))]
    if _workload(mine) != _workload(theirs):
        raise SystemExit(f"--reuse {args.reuse}: another workload ({' '.join(theirs)}); rerun everything.")
    kept = [r for r in earlier["results"] if r["server"] not in names and "error" not in r]
    print(f"reusing {', '.join(r['server'] for r in kept)} from {args.reuse}", file=sys.stderr)
    return kept


def _workload(argv: list[str]) -> list[str]:
    """The arguments that decide the requests and the servers' settings (not which servers run)."""
    keep, out, i = ("--requests", "--docs", "--seed", "--passage-words", "--batch-size", "--max-length",
                    "--concurrency", "--model", "--quick", "--warmup"), [], 0  # fmt: skip
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in keep:
            out.append(argv[i])
            if "=" not in argv[i] and name != "--quick" and i + 1 < len(argv):
                out.append(argv[i + 1])
                i += 1
        i += 1
    return out


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="Scaled-down XLM-R (built under bench/.cache).")
    parser.add_argument("--model", help="A local model directory (default: the bge-reranker-v2-m3 shape).")
    parser.add_argument(
        "--requests", type=int, default=None, help="Requests per concurrency level (48 quick, 16 full)."
    )
    parser.add_argument("--docs", type=int, default=20, help="Documents per request (20).")
    parser.add_argument(
        "--concurrency", type=_ints, default=[1, 4, 16], help="Closed-loop clients, comma-separated (1,4,16)."
    )
    parser.add_argument(
        "--passage-words", type=_token_range, default=(20, 300), help="Passage lengths MIN-MAX (20-300)."
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--rounds", type=int, default=1, help="Run every server this often, order alternated; best of (1)."
    )
    parser.add_argument("--warmup", type=int, default=3, help="Warm-up requests before measuring (3).")
    parser.add_argument(
        "--servers",
        default=None,
        help=f"Comma-separated, of: {', '.join(KNOWN)} (default: {', '.join(SERVERS)}).",
    )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="Ray Serve: the torch fp32 server as one process, and as a deployment of 1 and 2 replicas "
        "(each replica reserving cores/replicas CPUs), ratios against the one process.",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="Every server's batch size (32).")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--request-timeout", type=float, default=900.0, help="Seconds per request (900).")
    parser.add_argument(
        "--start-timeout", type=float, default=900.0, help="Seconds for a server to be ready."
    )
    parser.add_argument(
        "--time-limit", type=float, default=7200.0, help="Seconds for the whole run; then it stops (7200)."
    )
    parser.add_argument(
        "--infinity-python",
        help="Run infinity-emb with this Python ('current': this one) instead of building its venv.",
    )
    parser.add_argument("--rebuild-infinity", action="store_true", help="Recreate the infinity-emb venv.")
    parser.add_argument(
        "--reuse", help="Take the results of servers not run now from this earlier --json file."
    )
    parser.add_argument(
        "--no-ceilings", action="store_true", help="Skip the GEMM ceilings (and the %% of ceiling column)."
    )
    parser.add_argument("--progress", action="store_true", help="Print each phase to stderr as it ends.")
    parser.add_argument("--json", help="Also write the raw numbers (every latency and score) to this file.")
    parser.add_argument(
        "--write", action="store_true", help="Replace the serve section of docs/benchmarks.md with the table."
    )
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    args.requests = args.requests or (48 if args.quick else 16)
    deadline = time.monotonic() + args.time_limit
    args.servers = args.servers or ",".join(RAY_SERVERS if args.ray else SERVERS)
    names = [n for n in args.servers.split(",") if n]
    unknown = [n for n in names if n not in KNOWN]
    if unknown:
        parser.error(f"unknown server(s) {', '.join(unknown)}; known: {', '.join(KNOWN)}")
    if args.quick and args.model:
        parser.error("--quick and --model exclude each other")
    hi = args.passage_words[1]
    if hi + 40 + 4 > args.max_length:
        print(f"note: pairs of up to {hi + 44} tokens are truncated at --max-length {args.max_length}; "
              "infinity truncates at the tokenizer's own limit instead", file=sys.stderr)  # fmt: skip
    model = Path(args.model).resolve() if args.model else model_dir(args.quick)
    CACHE.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, str] = {}
    meta: dict = {
        "peer_versions": {"st-fastapi-fp32": {"sentence-transformers": _version("sentence-transformers")}}
    }
    python = None
    if "infinity-torch-fp32" in names:
        python, why = infinity_python(args.rebuild_infinity, args.infinity_python)
        if python is None:
            skipped["infinity-torch-fp32"] = why
            names[names.index("infinity-torch-fp32")] = "st-fastapi-fp32"
            names = list(dict.fromkeys(names))
            print(f"infinity-emb unavailable ({why}); the peer is the sentence-transformers stand-in",
                  file=sys.stderr)  # fmt: skip
        else:
            meta["peer_versions"]["infinity-torch-fp32"] = versions(
                python, ("infinity-emb", "torch", "sentence-transformers", "transformers")
            )
    prepare_exports(model, names, args.max_length, deadline - time.monotonic())
    requests = requests_of(args.requests, args.docs, args.seed, args.passage_words)
    bodies = [body(r) for r in requests]
    meta["tokens"] = request_tokens(model, requests, args.max_length)
    meta["model_dir"] = str(model)
    if not args.no_ceilings:
        meta["ceilings_before"] = measure_ceilings(model, names)
    warmups = [body(r) for r in requests_of(args.warmup, args.docs, args.seed + 1, args.passage_words)]
    results: list[dict] = _reused(args, names)

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"argv": args.argv, "model": str(model), "results": results, "skipped": skipped, **meta}, indent=1
            ))  # fmt: skip

    for round_ in range(1, args.rounds + 1):
        for name in list(names if round_ % 2 else names[::-1]):  # alternate the order round by round
            if time.monotonic() > deadline:
                if not any(r["server"] == name for r in results):
                    skipped.setdefault(name, f"--time-limit {args.time_limit:.0f} s reached")
                continue
            result = measure(spec(name, model, args, python), bodies, warmups, args, deadline)
            result["round"] = round_
            results.append(result)
            if "error" in result:
                print(f"{name} failed: {result['error']}", file=sys.stderr)
            if "error" in result and name == "infinity-torch-fp32" and "st-fastapi-fp32" not in names:
                print("infinity-emb failed to serve; measuring the stand-in instead", file=sys.stderr)
                names[names.index(name)] = "st-fastapi-fp32"
                result = measure(spec("st-fastapi-fp32", model, args, None), bodies, warmups, args, deadline)
                result["round"] = round_
                results.append(result)
            save()
    if not args.no_ceilings:
        meta["ceilings_after"] = measure_ceilings(model, names)
    report = render(results, skipped, args, meta)
    print(report)
    save()
    if args.json:
        data = json.loads(Path(args.json).read_text())
        Path(args.json).write_text(json.dumps({**data, "report": report}, indent=1))
    if args.write:
        _write_doc(("serve-ray" if args.ray else "serve") + ("-quick" if args.quick else ""), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
