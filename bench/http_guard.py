"""The cost of the service's connection guard: uvicorn's h11 protocol as it ships against ours with the
header and body deadlines and the connection bound (bge_rerank_cli/service/server.py), side by side.

Each protocol serves a trivial ASGI app (a 40-byte JSON answer, no model) in its own subprocess on
127.0.0.1, alone; a closed loop of --clients concurrent httpx clients sends --requests small POSTs
each, over keep-alive connections (and, with --fresh, a new connection per request, where the guard's
per-connection timer is armed each time). Rounds alternate the protocols (best of --rounds). Reports
requests/s, p50/p99 latency and the guarded/plain ratio. Everything is bounded and loopback only.

    python bench/http_guard.py                      # ~1 minute on 2 cores
    python bench/http_guard.py --requests 2000 --clients 8 --rounds 3 --fresh
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"].removeprefix("lifespan.")
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    while (await receive()).get("more_body"):
        pass
    body = b'{"status": "ok", "results": [1, 2, 3, 4]}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


def serve(kind: str, port: int) -> None:
    """Run one server (the subprocess side)."""
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from bge_rerank_cli.service.metrics import Metrics
    from bge_rerank_cli.service.server import ConnectionLimits, guarded_protocol

    protocol = H11Protocol if kind == "plain" else guarded_protocol(ConnectionLimits(), Metrics())
    config = uvicorn.Config(
        _app, host="127.0.0.1", port=port, http=protocol, log_level="warning", lifespan="on"
    )
    uvicorn.Server(config).run()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(kind: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)], cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the {kind} server did not start")


async def load(url: str, clients: int, requests: int, fresh: bool) -> tuple[float, list[float]]:
    import httpx

    latencies: list[float] = []
    body = b'{"query": "q", "documents": ["a", "b"]}'

    async def client() -> None:
        limits = httpx.Limits(max_keepalive_connections=0 if fresh else 1)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            for _ in range(requests):
                started = time.perf_counter()
                response = await http.post(url + "/v2/rerank", content=body)
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started, latencies


def cpu_facts() -> str:
    model, flags = platform.processor() or "?", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.*)", text).group(1)  # type: ignore[union-attr]
        flags = set(re.findall(r"\b(avx2|avx512f|avx512_vnni|avx512_bf16|amx_tile)\b", text))
    except (OSError, AttributeError):
        pass
    return f"{model}, {os.cpu_count()} cores, flags {' '.join(sorted(flags)) or 'none of avx2/avx512/amx'}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=500, help="requests per client per round")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fresh", action="store_true", help="a new connection for every request")
    parser.add_argument("--serve", choices=["plain", "guarded"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return
    best: dict[str, tuple[float, list[float]]] = {}
    for n in range(args.rounds):
        for kind in ("plain", "guarded") if n % 2 == 0 else ("guarded", "plain"):
            proc, url = start(kind)
            try:
                asyncio.run(load(url, args.clients, 20, args.fresh))  # warm-up
                seconds, latencies = asyncio.run(load(url, args.clients, args.requests, args.fresh))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
            rate = len(latencies) / seconds
            print(f"round {n + 1}: {kind:7} {rate:8.0f} req/s", file=sys.stderr)
            if kind not in best or rate > len(best[kind][1]) / best[kind][0]:
                best[kind] = (seconds, latencies)
    connection = "a new connection per request" if args.fresh else "keep-alive connections"
    print(f"CPU: {cpu_facts()}; {args.clients} clients x {args.requests} requests, {connection}, best of "
          f"{args.rounds} rounds\n")  # fmt: skip
    print("| protocol | requests/s | p50 ms | p99 ms | x plain |\n|---|---|---|---|---|")
    plain_rate = len(best["plain"][1]) / best["plain"][0]
    for kind in ("plain", "guarded"):
        seconds, latencies = best[kind]
        ordered = sorted(latencies)
        rate = len(latencies) / seconds
        p50, p99 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        label = "uvicorn h11 as shipped" if kind == "plain" else "guarded (deadlines + connection bound)"
        print(f"| {label} | {rate:.0f} | {p50 * 1000:.2f} | {p99 * 1000:.2f} | {rate / plain_rate:.3f} |")


if __name__ == "__main__":
    main()
