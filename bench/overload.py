"""Goodput under overload (#21): `bge-rerank serve` against 1x, 2x, 4x and 8x its capacity in closed-loop
clients that honour Retry-After. A bounded load generator on loopback.

One `bge-rerank serve` subprocess on 127.0.0.1 (a free port; torch fp32 on the CPU, --max-queue Q,
--timeout T, and any --server-arg), started as bench/serve.py starts its servers: wait for GET /ready,
--warmup requests, then every level, then SIGTERM (always; its exit code is in the report). The model is
the scaled-down XLM-R of `bench/serve.py --quick` (4 layers, hidden 256, random weights, built under
bench/.cache on first use) unless --model DIR: a fast model, so that tokenising is a real share of the
cost, as in the original report (1000-document requests: 4 clients 6,271 pairs/s; 32 clients 1,746 pairs/s,
813 x 429, p95 13.3 s).

Requests: --pool distinct Cohere v2 bodies, {"query", "documents", "top_n": 3}, --docs passages each
(default 1000, of 10-60 words: bench/speed.py's seeded generator, as bench/serve.py builds its requests);
client n sends body n, n+1, ... of the pool in turn.

Capacity. 1x is the most closed-loop clients the server holds without refusing any: one request being
scored plus the queue's worth waiting, max(1, Q // D) + 1 (Q = 3000, D = 1000: 4 clients, and 8x is 32,
the report's two figures). It is computed, not measured; --clients-1x N sets it instead. Levels are
multiples of it (--levels 1,2,4,8; --levels 1,2,4,8,1 runs 1x again at the end to see drift).

Each level is a fresh httpx.AsyncClient (connection limits = its clients) and a fresh set of clients, each
a closed loop: send, and on 200 send the next request; on 429 or 503 sleep Retry-After seconds (1 if
absent; capped by what is left of the level) plus jitter (0 to 0.05 s + --jitter x Retry-After), then send
the same request again; on anything else (a connection error, a timeout, another status) count an error,
pause 0.5 s and go on with the next request. Clients start spread over the first second; the measured
window is the --seconds after a --ramp. When the window closes no attempt is started; attempts in flight
may finish (--drain seconds at most, then they are cancelled) so that the next level starts on an idle
server, but count only as described next.

What a row says, over the window:
- goodput: pairs answered per second. Each 200 answer's D pairs are spread evenly over its successful
  attempt's send-to-answer interval and the window's share is counted (unbiased in steady state, without
  the +-1 request granularity of counting whole answers when one answer is several % of a window); the
  JSON also has the plain count of answers completed inside the window (goodput_completed).
- clients (with a 200): the level's clients, and how many of them got a 200 answer inside the window
  (a closed-loop client that was just answered sends again at once and may take the queue's free place
  before a refused client's Retry-After is over).
- 200 latency: send to answer of the successful attempt; end to end: from the first attempt of that request
  (so with every 429 wait and retry). Both over the 200 answers completed inside the window.
- 429s and 503s: answers completed inside the window, and in brackets over the whole level up to the
  window's end (ramp included: with a long Retry-After the first wave of refusals comes in the ramp and its
  clients sleep through the window); over the whole level, their send-to-answer latency (a refusal should be
  immediate: milliseconds) and the Retry-After values they carried (min / median / max).
- refused and unanswered at end: every closed-loop client has one request outstanding at any time; of
  those outstanding when the window closed, the ones refused at least once (the end-to-end latency only sees
  requests that got their 200, so this shows the starved ones), and the oldest one's age in seconds.
- server CPU: the server process's user + system CPU seconds (/proc/PID/stat) per second of window, i.e.
  cores busy; the load generator's own CPU is in the JSON (it shares the machine).

    python bench/overload.py --quick        # levels of 12 s: ~2 minutes (~4 where a request takes seconds)
    python bench/overload.py --json bench/.cache/overload.json          # levels of 20 s: ~3-4 minutes
    python bench/overload.py --levels 1,2,4,8,1 --seconds 30            # 1x again at the end: drift
    python bench/overload.py --max-queue 10000 --server-arg="--gather-ms 2"   # later server flags win
    python bench/overload.py --model DIR --docs 200 --clients-1x 6
    python bench/overload.py --quick --docs 200 --max-queue 600 --seconds 20
        # a slow machine (a 1000-document request taking seconds): smaller requests, 1x still 4 clients
    git archive --prefix=head/ HEAD | tar -x -C /tmp && python bench/overload.py --server-source /tmp/head
        # the server's code from another tree (before/after a change); the report says which

The Markdown table goes to stdout, progress to stderr. Everything is bounded: --request-timeout per attempt,
--start-timeout for the server, --drain per level, --time-limit for the whole run (a level that no longer
fits is not run). Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from serve import (  # noqa: E402
    JSON_HEADERS,
    LOGS,
    Spec,
    _ints,
    _version,
    cpu_seconds,
    free_port,
    machine,
    peak_rss_mb,
    percentile,
    requests_of,
    stop,
    wait_ready,
)
from speed import CACHE, _token_range, model_dir  # noqa: E402

PATH = "/v2/rerank"
TOP_N = 3
DEFAULT_RETRY_AFTER = 1.0  # seconds, when a 429 or 503 carries no (readable) Retry-After
MIN_WAIT = 0.01  # no retry sooner than this, whatever Retry-After says
ERROR_PAUSE = 0.5  # after an error, before the next request
STAGGER = 1.0  # clients start spread over this many seconds


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt. Times are seconds since its level began; status 0: no HTTP answer."""

    client: int
    body: int
    first_sent: float  # the first attempt of the same request
    sent: float
    done: float
    status: int
    retry_after: float | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


@dataclass
class Level:
    """One load level: what every client saw, and the window that counts."""

    multiplier: int
    clients: int
    start: float  # window start, seconds since the level began
    end: float  # window end
    attempts: list[Attempt] = field(default_factory=list)
    waiting: list[tuple[float, int]] = field(default_factory=list)  # requests without a 200 when the
    # window closed: (first attempt sent, refusals so far)
    cancelled: int = 0  # attempts still in flight when the drain ran out
    drain_seconds: float = 0.0
    server_cpu_seconds: float | None = None
    client_cpu_seconds: float | None = None
    note: str = ""


# --- statistics (pure) -----------------------------------------------------------------------------


def clients_at_1x(max_queue: int, docs: int) -> int:
    """The queue's worth of requests waiting plus the one being scored."""
    return max(1, max_queue // docs) + 1


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After in seconds (delta-seconds; an HTTP date or garbage gives None)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def backoff(retry_after: float | None, jitter: float, rng: random.Random) -> float:
    """How long a client waits before sending a refused request again."""
    base = DEFAULT_RETRY_AFTER if retry_after is None else retry_after
    return max(MIN_WAIT, base + rng.uniform(0.0, 0.05 + jitter * base))


def window_share(sent: float, done: float, start: float, end: float) -> float:
    """The share of [sent, done] inside [start, end] (a zero-length interval: 1 or 0)."""
    if done <= sent:
        return 1.0 if start <= done <= end else 0.0
    return max(0.0, min(done, end) - max(sent, start)) / (done - sent)


def _spread(values: list[float], qs: tuple[float, ...]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for q in qs:
        v = percentile(values, q)
        out[f"p{round(q * 100)}"] = None if v != v else v
    return out


def summarise(level: Level, docs: int) -> dict[str, Any]:
    """A level's figures over its window (see the module docstring for each definition)."""
    a, b = level.start, level.end
    seconds = max(b - a, 1e-9)
    inside = [x for x in level.attempts if a <= x.done <= b]
    ok = [x for x in inside if x.ok]
    other = [x for x in inside if not x.ok and x.status not in (429, 503)]
    attributed = docs * sum(window_share(x.sent, x.done, a, b) for x in level.attempts if x.ok)
    # Refusals over the whole level up to the window's end, ramp included: with a long Retry-After the
    # first wave of 429s comes in the ramp and its clients sleep through the window.
    level_end = [x for x in level.attempts if x.done <= b]
    refused = [x for x in level_end if x.status == 429]
    timed_out = [x for x in level_end if x.status == 503]
    retry = [x.retry_after for x in refused + timed_out if x.retry_after is not None]
    cpu = level.server_cpu_seconds
    return {
        "multiplier": level.multiplier,
        "clients": level.clients,
        "seconds": b - a,
        "answered": len(ok),
        "served_clients": len({x.client for x in ok}),
        "pairs": attributed,
        "goodput": attributed / seconds,
        "goodput_completed": len(ok) * docs / seconds,
        "latency_ms": _spread([(x.done - x.sent) * 1000 for x in ok], (0.5, 0.95, 0.99)),
        "end_to_end_ms": _spread([(x.done - x.first_sent) * 1000 for x in ok], (0.5, 0.95, 0.99)),
        "attempts": len(inside),
        "r429": sum(1 for x in refused if x.done >= a),
        "r429_level": len(refused),
        "r429_ms": _spread([(x.done - x.sent) * 1000 for x in refused], (0.5, 0.95, 1.0)),
        "r503": sum(1 for x in timed_out if x.done >= a),
        "r503_level": len(timed_out),
        "r503_ms": _spread([(x.done - x.sent) * 1000 for x in timed_out], (0.5, 0.95, 1.0)),
        "retry_after_s": _spread(retry, (0.0, 0.5, 1.0)),
        "retry_after_missing": sum(1 for x in refused + timed_out if x.retry_after is None),
        "other": len(other),
        "other_samples": sorted({x.error for x in other})[:5],
        "unanswered": len(level.waiting),
        "unanswered_refused": sum(1 for _, refusals in level.waiting if refusals),
        "oldest_unanswered_s": max((b - first for first, _ in level.waiting), default=None),
        "cancelled": level.cancelled,
        "drain_seconds": level.drain_seconds,
        "server_cores": None if cpu is None else cpu / seconds,
        "server_cpu_ms_per_pair": None if cpu is None or not attributed else cpu * 1000 / attributed,
        "client_cores": None if level.client_cpu_seconds is None else level.client_cpu_seconds / seconds,
        "note": level.note,
    }


def baseline(rows: list[dict]) -> dict | None:
    """The un-overloaded figure: the first level at the smallest multiplier."""
    return min(rows, key=lambda r: r["multiplier"], default=None)


def _n(x: float | None, digits: int = 0) -> str:
    return "-" if x is None or x != x else f"{x:,.{digits}f}"


def _three(d: dict[str, float | None], digits: int = 0) -> str:
    return " / ".join(_n(v, digits) for v in d.values())


def table(rows: list[dict]) -> list[str]:
    base = baseline(rows)
    lines = [
        "| load | clients (with a 200) | 200s | goodput pairs/s | % of 1x | 200 latency p50 / p95 / p99 ms "
        "| end to end p50 / p95 / p99 ms | 429s window (level) | 429 latency p50 / p95 / max ms "
        "| Retry-After min / median / max s | 503s window (level) | other errors "
        "| refused and unanswered at end (oldest s) "
        "| server CPU cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pct = 100 * r["goodput"] / base["goodput"] if base and base["goodput"] else None
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(
            f"| {r['multiplier']}x{note} | {r['clients']} ({r['served_clients']}) | {r['answered']} | {_n(r['goodput'])} | "
            f"{_n(pct)}% | {_three(r['latency_ms'])} | {_three(r['end_to_end_ms'])} | "
            f"{r['r429']} ({r['r429_level']}) | {_three(r['r429_ms'])} | "
            f"{_three(r['retry_after_s'], 1) if r['r429_level'] + r['r503_level'] else '-'} | "
            f"{r['r503']} ({r['r503_level']}) | {r['other']} | "
            f"{r['unanswered_refused']} ({_n(r['oldest_unanswered_s'])}) | {_n(r['server_cores'], 2)} |"
        )
    return lines


def verdict(rows: list[dict], immediate_ms: float) -> str:
    """The #21 requirement, read off the rows: the top level's goodput against 1x, and the 429s' p95."""
    base = baseline(rows)
    top = max(rows, key=lambda r: r["multiplier"], default=None)
    if not base or not top or top is base or not base["goodput"]:
        return "requirement (#21): not enough levels to compare"
    pct = 100 * top["goodput"] / base["goodput"]
    slow = [r["r429_ms"]["p95"] for r in rows if r["r429_level"] and r["r429_ms"]["p95"] is not None]
    worst = max(slow, default=None)
    refusals = (
        "no 429s at all"
        if worst is None
        else f"429 latency p95 at most {worst:,.0f} ms (immediate: <= {immediate_ms:g} ms): "
        + ("met" if worst <= immediate_ms else "NOT met")
    )
    return (
        f"requirement (#21): at {top['multiplier']}x goodput is {pct:.0f}% of {base['multiplier']}x (>= 80%): "
        + ("met" if pct >= 80 else "NOT met")
        + f"; {refusals}"
    )


def caveats(rows: list[dict]) -> list[str]:
    """What makes a row's goodput less exact: few answers in its window, or answers cut off by the drain."""
    out = []
    few = [f"{r['multiplier']}x ({r['answered']})" for r in rows if r["answered"] < 10]
    if few:
        out.append(
            "fewer than 10 answers inside the window, so goodput and percentiles are coarse: "
            + ", ".join(few)
            + "; a longer --seconds or a smaller --docs helps"
        )
    cut = [f"{r['multiplier']}x ({r['cancelled']})" for r in rows if r["cancelled"]]
    if cut:
        out.append(
            "attempts still in flight when --drain ran out were cancelled; their share of the window is not "
            "counted, so goodput reads low: " + ", ".join(cut)
        )
    return out


def render(rows: list[dict], meta: dict) -> str:
    a = meta["args"]
    lo, hi = a["passage_words"]
    header = [
        f"{meta['model_text']}; requests of {a['docs']} documents (queries 5-40 words, passages {lo}-{hi} "
        f"words, {a['pool']} distinct bodies, seed {a['seed']}), top_n {TOP_N}, POST {PATH} on loopback",
        f"server: --max-queue {a['max_queue']} --timeout {a['timeout']:g} --batch-size {a['batch_size']} "
        f"--max-length {a['max_length']} {' '.join(meta['server_args'])}".rstrip()
        + f"; code {meta['git']}; exit code after SIGTERM: {meta.get('exit_code', '?')}",
        f"1x = {meta['clients_1x']} clients ({meta['capacity']}); each level: {a['ramp']:g} s ramp, then a "
        f"{a['seconds']:g} s window; clients honour Retry-After (+ jitter), retrying the same request",
        f"{meta['machine']}; {meta['isa']}; torch {meta['torch']}; load average {meta['load_before']} before, "
        f"{meta.get('load_after', '?')} after",
        f"command: `python bench/overload.py {' '.join(meta['argv'])}`",
    ]
    notes = [
        "",
        "clients (with a 200): how many got a 200 inside the window. "
        "goodput: pairs of 200 answers per second of the window (each answer's pairs spread over its "
        "send-to-answer interval). 200 latency: the successful attempt; end to end: from the request's first "
        "attempt, with its 429 waits and retries. 429s and 503s: answered inside the window (and over the "
        "whole level, ramp included); their latency (send to refusal) and Retry-After: over the whole level. "
        "refused and unanswered at end: every client has one request outstanding at any time; those "
        "refused at least once and still without a 200 when the window closed (and the age of the oldest "
        "outstanding request, from its first attempt). server CPU: cores busy "
        "(user + system) over the window.",
        verdict(rows, a["immediate_ms"]),
        *caveats(rows),
    ]
    return "\n".join(header) + "\n\n" + "\n".join(table(rows)) + "\n" + "\n".join(notes)


# --- the load ---------------------------------------------------------------------------------------


@dataclass
class Run:
    """What a level's clients share."""

    client: Any  # httpx.AsyncClient
    bodies: list[bytes]
    clients: int
    stop_at: float
    began: float
    timeout: float
    jitter: float
    seed: int
    level: Level
    in_flight: int = 0

    def now(self) -> float:
        return time.monotonic() - self.began

    async def pause(self, seconds: float) -> None:
        """Sleep, but not past the end of the window."""
        left = min(seconds, self.stop_at - self.now())
        if left > 0:
            await asyncio.sleep(left)


async def post(run: Run, body: int) -> tuple[int, float | None, str]:
    """One attempt: (status, Retry-After seconds, error text); status 0 when no HTTP answer came."""
    import httpx

    run.in_flight += 1
    try:
        r = await asyncio.wait_for(
            run.client.post(PATH, content=run.bodies[body], headers=JSON_HEADERS), run.timeout
        )
    except (httpx.HTTPError, asyncio.TimeoutError) as exc:
        return 0, None, f"{type(exc).__name__}: {exc}"[:200]
    finally:
        run.in_flight -= 1
    error = ""
    if r.status_code == 200:
        try:
            if len(r.json()["results"]) != TOP_N:
                error = f"200 with {len(r.json()['results'])} results, not {TOP_N}"
        except (ValueError, KeyError, TypeError):
            error = f"200 with an unreadable body: {r.text[:100]}"
    elif r.status_code not in (429, 503):
        error = f"HTTP {r.status_code}: {r.text[:150]}"
    return r.status_code, retry_after_seconds(r.headers.get("retry-after")), error


async def one_request(run: Run, n: int, body: int, rng: random.Random) -> None:
    """Send one request until it is answered, fails otherwise (then pause), or the window closes; a request
    without a 200 when the window closed goes to ``level.waiting``."""
    first, refusals = run.now(), 0
    try:
        while run.now() < run.stop_at:
            sent = run.now()
            status, retry, error = await post(run, body)
            attempt = Attempt(n, body, first, sent, run.now(), status, retry, error)
            run.level.attempts.append(attempt)
            if attempt.ok:
                if attempt.done > run.stop_at:  # answered, but after the window closed
                    run.level.waiting.append((first, refusals))
                return
            if status not in (429, 503):
                await run.pause(ERROR_PAUSE)
                return
            refusals += 1
            await run.pause(backoff(retry, run.jitter, rng))
    except asyncio.CancelledError:  # still in flight when the drain ran out
        run.level.waiting.append((first, refusals))
        raise
    run.level.waiting.append((first, refusals))


async def client_loop(run: Run, n: int) -> None:
    """A closed-loop client: its next request as soon as the last one is answered (or failed)."""
    rng = random.Random(run.seed * 7919 + n)
    await run.pause(rng.uniform(0.0, STAGGER))
    k = 0
    while run.now() < run.stop_at:
        await one_request(run, n, (n + k) % len(run.bodies), rng)
        k += 1


async def watch(run: Run, proc: subprocess.Popen, until: float) -> bool:
    """Sleep until ``until`` (level time); False as soon as the server has exited."""
    while run.now() < until:
        if proc.poll() is not None:
            return False
        await asyncio.sleep(min(0.25, max(0.0, until - run.now())))
    return proc.poll() is None


async def run_level(
    url: str, bodies: list[bytes], level: Level, proc: subprocess.Popen, args: argparse.Namespace
) -> Level:
    import httpx

    limits = httpx.Limits(max_connections=level.clients, max_keepalive_connections=level.clients)
    async with httpx.AsyncClient(base_url=url, timeout=args.request_timeout, limits=limits) as client:
        run = Run(client, bodies, level.clients, level.end, time.monotonic(), args.request_timeout,
                  args.jitter, args.seed, level)  # fmt: skip
        tasks = [asyncio.create_task(client_loop(run, n)) for n in range(level.clients)]
        alive = await watch(run, proc, level.start)
        cpu, own = cpu_seconds(proc.pid), time.process_time()
        alive = alive and await watch(run, proc, level.end)
        if not alive:
            level.end = run.stop_at = min(level.end, run.now())
            level.note = "server exited"
        cpu_end, own_end = cpu_seconds(proc.pid), time.process_time()
        if cpu is not None and cpu_end is not None:
            level.server_cpu_seconds = cpu_end - cpu
        level.client_cpu_seconds = own_end - own
        drain_from = run.now()
        _, pending = await asyncio.wait(tasks, timeout=args.drain if alive else 1.0)
        level.cancelled = run.in_flight
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        level.drain_seconds = run.now() - drain_from
    return level


# --- the server -------------------------------------------------------------------------------------


def server_spec(model: Path, args: argparse.Namespace) -> Spec:
    port = free_port()
    cmd = [sys.executable, "-m", "bge_rerank_cli", "serve", "-m", str(model), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--device", "cpu", "--backend", "torch", "--dtype", "fp32"]
    cmd += ["--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    cmd += ["--max-docs", str(max(1000, args.docs)), "--max-queue", str(args.max_queue)]
    cmd += ["--timeout", str(args.timeout), "--drain-seconds", "5"]
    cmd += server_args(args)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if args.server_source:  # its bge_rerank_cli first on the path (python -m puts the cwd first)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(args.server_source), env.get("PYTHONPATH")) if p)
    return Spec("overload", cmd, env, "/ready", PATH, port)


def server_args(args: argparse.Namespace) -> list[str]:
    return [part for value in args.server_arg for part in shlex.split(value)]


def warm_up(url: str, bodies: list[bytes], timeout: float) -> list[float]:
    """Sequential requests before the levels; raises RuntimeError unless each is answered 200."""
    import httpx

    out = []
    for payload in bodies:
        started = time.perf_counter()
        try:
            r = httpx.post(url + PATH, content=payload, headers=JSON_HEADERS, timeout=timeout)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"warm-up request failed: {type(exc).__name__}: {exc}") from None
        if r.status_code != 200:
            raise RuntimeError(f"warm-up request: HTTP {r.status_code}: {r.text[:300]}")
        out.append((time.perf_counter() - started) * 1000)
    return out


def body(request: dict) -> bytes:
    return json.dumps({"model": "bench-model", **request, "top_n": TOP_N}).encode()


def git_describe() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                         text=True)  # fmt: skip
    return out.stdout.strip() or "?"


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def measure(model: Path, args: argparse.Namespace, meta: dict, save: Any) -> list[dict]:
    """Start the server, warm it up, run every level, stop it (always). Returns the level summaries."""
    deadline = time.monotonic() + args.time_limit
    bodies = [body(r) for r in requests_of(args.pool, args.docs, args.seed, args.passage_words)]
    warm = [body(r) for r in requests_of(args.warmup, args.docs, args.seed + 1, args.passage_words)]
    spec = server_spec(model, args)
    meta["server_cmd"] = spec.cmd
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / "overload.log"
    meta["log"] = str(log)
    rows: list[dict] = []
    with log.open("wb") as out:
        proc = subprocess.Popen(spec.cmd, stdout=out, stderr=subprocess.STDOUT, env=spec.env, cwd=args.server_source or ROOT,
                                start_new_session=True)  # fmt: skip
    try:
        why = wait_ready(spec, proc, log, min(args.start_timeout, max(1.0, deadline - time.monotonic())))
        if why:
            raise RuntimeError(f"the server did not start: {why}")
        url = f"http://127.0.0.1:{spec.port}"
        meta["warmup_ms"] = warm_up(url, warm, args.request_timeout)
        say(f"ready; warm-up {', '.join(f'{w:.0f}' for w in meta['warmup_ms'])} ms")
        for m in args.levels:
            clients = meta["clients_1x"] * m
            if time.monotonic() + args.ramp + args.seconds + args.drain > deadline:
                say(f"{m}x not run: --time-limit {args.time_limit:g} s")
                continue
            say(f"{m}x: {clients} clients, {args.ramp:g} s ramp + {args.seconds:g} s")
            level = Level(m, clients, args.ramp, args.ramp + args.seconds)
            level = asyncio.run(run_level(url, bodies, level, proc, args))
            row = summarise(level, args.docs)
            rows.append(row)
            meta["raw"].append(
                {"window": [level.start, level.end], "attempts": [astuple_short(x) for x in level.attempts],
                 "waiting": level.waiting}
            )  # fmt: skip
            say(progress(row))
            save(rows)
            if level.note == "server exited":
                break
            time.sleep(1.0)  # let the server settle before the next level
        meta["peak_rss_mb"] = peak_rss_mb(proc.pid)
    finally:
        meta["exit_code"] = stop(proc)
    return rows


def astuple_short(x: Attempt) -> list:
    """An attempt for the JSON, in ATTEMPT_FIELDS order, times rounded to 0.1 ms."""
    d = asdict(x)
    return [round(v, 4) if isinstance(v, float) else v for v in d.values()]


ATTEMPT_FIELDS = list(Attempt.__dataclass_fields__)


def progress(r: dict) -> str:
    return (
        f"{r['multiplier']}x: {r['goodput']:,.0f} pairs/s, {r['answered']} x 200, {r['r429_level']} x 429 "
        f"(p95 {_n(r['r429_ms']['p95'])} ms), {r['r503_level']} x 503, {r['other']} other, 200 p95 "
        f"{_n(r['latency_ms']['p95'])} ms, drain {r['drain_seconds']:.1f} s, {r['cancelled']} cancelled"
    )


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="Levels of 12 s after a 3 s ramp (default 20 s after 5 s).")
    add("--model", help="A local model directory (default: the scaled-down XLM-R, built on first use).")
    add("--docs", type=int, default=1000, help="Documents per request (1000).")
    add("--passage-words", type=_token_range, default=(10, 60), help="Passage lengths MIN-MAX (10-60).")
    add("--pool", type=int, default=16, help="Distinct request bodies, sent in turn (16).")
    add("--seed", type=int, default=7)
    add("--levels", type=_ints, default=[1, 2, 4, 8], help="Multiples of 1x, comma-separated (1,2,4,8).")
    add("--clients-1x", type=int, default=None, help="Clients at 1x (default: max(1, Q // D) + 1).")
    add("--seconds", type=float, default=None, help="Measured window per level (20; --quick 12).")
    add("--ramp", type=float, default=None, help="Seconds before the window (5; --quick 3).")
    add("--drain", type=float, default=30.0, help="Seconds in-flight attempts may finish after a level (30).")
    add("--jitter", type=float, default=0.1, help="Extra wait, 0.05 s + this share of Retry-After at most.")
    add("--warmup", type=int, default=2, help="Warm-up requests before the levels (2).")
    add("--max-queue", type=int, default=3000, help="The server's --max-queue, pairs (3000).")
    add("--timeout", type=float, default=60.0, help="The server's --timeout, seconds (60).")
    add("--batch-size", type=int, default=32, help="The server's --batch-size (32).")
    add("--max-length", type=int, default=512, help="The server's --max-length (512).")
    add("--server-arg", action="append", default=[], help="More server flags (shell-split; repeatable).")
    add(
        "--server-source",
        type=lambda t: Path(t).resolve(),
        default=None,
        help="Run the server's bge_rerank_cli from this source tree (e.g. a `git archive` of another commit).",
    )
    add("--request-timeout", type=float, default=None, help="Seconds per attempt (server --timeout + 30).")
    add("--start-timeout", type=float, default=300.0, help="Seconds for the server to be ready (300).")
    add("--time-limit", type=float, default=900.0, help="Seconds for the whole run (900).")
    add("--immediate-ms", type=float, default=100.0, help="A 429 p95 at most this is 'immediate' (100).")
    add("--json", help="Also write every figure and attempt to this file.")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (12.0 if args.quick else 20.0)
    args.ramp = args.ramp if args.ramp is not None else (3.0 if args.quick else 5.0)
    args.request_timeout = args.request_timeout or args.timeout + 30.0
    if (
        min(args.docs, args.pool, args.max_queue, args.clients_1x or 1) < 1
        or args.seconds <= 0
        or args.ramp < 0
    ):
        parser.error("--docs, --pool, --max-queue and --clients-1x must be >= 1, --seconds > 0, --ramp >= 0")
    return args


def main() -> int:
    from bge_rerank_cli.ceilings import isa_flags, isa_line

    args = parse()
    model = Path(args.model).resolve() if args.model else model_dir(True)
    c1 = args.clients_1x or clients_at_1x(args.max_queue, args.docs)
    capacity = (
        "given by --clients-1x"
        if args.clients_1x
        else f"computed: max(1, {args.max_queue} // {args.docs}) + 1, not measured"
    )
    meta: dict[str, Any] = {
        "argv": sys.argv[1:],
        "args": {k: v for k, v in vars(args).items()},
        "model_dir": str(model),
        "model_text": f"model {model}"
        if args.model
        else "scaled-down XLM-R (4 layers, hidden 256), random weights",
        "server_args": server_args(args),
        "clients_1x": c1,
        "capacity": capacity,
        "git": f"from {args.server_source}" if args.server_source else git_describe(),
        "machine": machine(),
        "isa": isa_line(isa_flags()),
        "torch": _version("torch"),
        "load_before": _load(),
        "attempt_fields": ATTEMPT_FIELDS,
        "raw": [],
    }
    CACHE.mkdir(parents=True, exist_ok=True)

    def save(rows: list[dict], report: str | None = None) -> None:
        if args.json:
            Path(args.json).write_text(
                json.dumps({**meta, "levels": rows, "report": report}, indent=1, default=str)
            )

    try:
        rows = measure(model, args, meta, save)
    except RuntimeError as exc:
        say(f"error: {exc} (server log: {meta.get('log')}; exit code {meta.get('exit_code')})")
        save([])
        return 1
    meta["load_after"] = _load()
    report = render(rows, meta)
    print(report)
    save(rows, report)
    return 0 if rows else 1


if __name__ == "__main__":
    raise SystemExit(main())
