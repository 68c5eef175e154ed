"""`bge-rerank serve --ray` (#22): the same app as a Ray Serve deployment on a real local Ray cluster (two
replicas of the tiny model at 0.5 CPU each), called through Ray Serve's HTTP proxy on a loopback port:
every dialect gives the single-process server's scores, the API key and limits hold, load from 8
clients is spread over both replicas (each answer says which), a replica killed under load is replaced
while the other keeps answering (a request in flight on it gets a retryable 503), and SIGTERM takes the
deployment and the cluster it started down and ends the process by that signal. Bounded in count and
time; every request targets 127.0.0.1."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.test_serve import DOCS, QUERY, Server, free_port, launch, stop

httpx = pytest.importorskip("httpx")
pytest.importorskip("ray.serve", reason="the ray extra (Ray Serve) is not installed")


def raylets() -> set[int]:
    found = subprocess.run(["pgrep", "-f", "raylet"], capture_output=True, text=True).stdout.split()
    return {int(pid) for pid in found}


@pytest.fixture(scope="module")
def single(tiny_xlmr: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = launch(tmp_path_factory.mktemp("single"), "-m", f"tiny={tiny_xlmr}", "--max-docs", "64")
    yield running
    stop(running)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Any]:
    """An OTLP receiver the replicas send their spans to (tests/test_serve_tracing.py's); None without
    the otel extra (the other tests run without tracing then)."""
    try:
        import opentelemetry.sdk  # noqa: F401

        from tests.test_serve_tracing import start_receiver
    except (ImportError, pytest.skip.Exception):
        yield None
        return

    found, http = start_receiver()
    yield found
    http.shutdown()


@pytest.fixture(scope="module")
def cluster(
    tiny_xlmr: Path, receiver: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, set[int]]]:
    before = raylets()
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "100"  # the replicas export every 100 ms (they inherit it)
    try:
        traced = ["--otlp-endpoint", receiver.url] if receiver is not None else []
        running = launch(tmp_path_factory.mktemp("ray"), "-m", f"tiny={tiny_xlmr}", "--max-docs", "64", "--ray",
                         "--replicas", "2", "--replica-cpus", "0.5", *traced)  # fmt: skip
    finally:
        del os.environ["OTEL_BSP_SCHEDULE_DELAY"]
    yield running, raylets() - before
    stop(running)


def answers(server: Server) -> dict[str, list[float]]:
    """Each dialect's scores for the same query and documents, in document order."""
    cohere = server.post("/v2/rerank", {"model": "tiny", "query": QUERY, "documents": DOCS}).json()["results"]
    jina = server.post("/v1/rerank", {"query": QUERY, "documents": DOCS}).json()["results"]
    tei = server.post("/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True}).json()
    score = server.post("/score", {"pairs": [{"query": QUERY, "passage": d} for d in DOCS]}).json()["results"]
    return {
        "cohere": [r["relevance_score"] for r in sorted(cohere, key=lambda r: r["index"])],
        "jina": [r["relevance_score"] for r in sorted(jina, key=lambda r: r["index"])],
        "tei": [r["score"] for r in sorted(tei, key=lambda r: r["index"])],
        "score": [r["logit"] for r in score],
    }


def test_every_dialect_through_ray_serve_gives_the_single_process_servers_scores(single, cluster):
    server, _ = cluster
    expected, got = answers(single), answers(server)
    for dialect, scores in expected.items():
        assert got[dialect] == pytest.approx(scores, abs=1e-6), dialect


def test_the_key_the_limits_and_the_metrics_hold_behind_the_proxy(cluster):
    server, _ = cluster
    assert httpx.post(server.url + "/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 401
    too_many = server.post("/v1/rerank", {"query": "q", "documents": ["a"] * 65})
    assert too_many.status_code == 413 and too_many.json()["error_type"] == "Validation"
    assert "bge_rerank_requests_total" in server.get("/metrics").text
    info = server.get("/info").json()
    assert info["replica"]["id"] and info["replica"]["pid"] > 0 and info["models"][0]["id"] == "tiny"


def test_each_replica_sends_its_spans_with_the_callers_parent(cluster, receiver):
    server, _ = cluster
    if receiver is None:
        pytest.skip("the otel extra is not installed")
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    answer = server.post("/v1/rerank", {"query": QUERY, "documents": DOCS},
                         headers={"traceparent": f"00-{trace_id}-{parent}-01"})  # fmt: skip
    assert answer.status_code == 200

    def mine(spans: list) -> list:
        return [s for s in spans if s.trace_id.hex() == trace_id]

    spans = mine(receiver.wait_for(lambda spans: any(s.name == "forward pass" for s in mine(spans))))
    (request,) = [s for s in spans if s.name == "POST /v1/rerank"]
    assert request.parent_span_id.hex() == parent
    assert {"tokenize", "queue wait", "forward pass"} <= {
        s.name for s in spans if s.parent_span_id == request.span_id
    }


def load(server: Server, seconds: float, clients: int = 8) -> tuple[Counter, Counter, list]:
    """``clients`` threads rerank for ``seconds``: statuses, the replica of each 200, the other answers."""
    statuses, replicas, others = Counter(), Counter(), []
    stop_at = time.monotonic() + seconds
    docs = [f"{n} deep learning trains neural networks " * 20 for n in range(24)]

    def client() -> None:
        while time.monotonic() < stop_at:
            answer = server.post("/v1/rerank", {"query": QUERY, "documents": docs})
            statuses[answer.status_code] += 1
            if answer.status_code == 200:
                replicas[answer.headers["x-bge-rerank-replica"]] += 1
            else:
                others.append(answer)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses, replicas, others


def test_load_from_8_clients_is_spread_over_both_replicas(cluster):
    server, _ = cluster
    statuses, replicas, _ = load(server, 6)
    assert set(statuses) == {200}
    assert len(replicas) == 2, replicas
    assert min(replicas.values()) >= 0.1 * sum(replicas.values()), replicas  # both carry real load


def test_a_replica_killed_under_load_is_replaced_and_the_other_keeps_answering(cluster):
    server, _ = cluster
    pids = {server.get("/info").json()["replica"]["pid"] for _ in range(20)}
    assert len(pids) == 2
    victim = min(pids)
    result: list = []
    loader = threading.Thread(target=lambda: result.append(load(server, 10)))
    loader.start()
    time.sleep(3)
    os.kill(victim, signal.SIGKILL)
    loader.join()
    statuses, _, others = result[0]
    assert statuses[200] > 50 and set(statuses) <= {200, 503}
    assert statuses[503] <= 8  # at most the requests in flight on the killed replica (one per client)
    for answer in others:  # retryable, in the service's error shape
        assert answer.headers["retry-after"] == "1" and answer.json()["error_type"] == "Unhealthy"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # Ray Serve starts a new replica in its place
        now = {server.get("/info").json()["replica"]["pid"] for _ in range(20)}
        if len(now) == 2 and victim not in now:
            break
        time.sleep(1)
    assert len(now) == 2 and victim not in now, now


def test_sigterm_takes_the_deployment_and_its_cluster_down(cluster):
    server, started = cluster
    assert started  # the local cluster this server started
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(timeout=90)
    assert code in (-signal.SIGTERM, 128 + signal.SIGTERM), server.log.read_text()[-2000:]
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + "/health", timeout=2)
    deadline = time.monotonic() + 30
    while raylets() & started and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not raylets() & started  # the cluster it started is gone
    log = server.log.read_text()
    assert "stopping the deployment" in log


def ray_processes() -> set[int]:
    found = subprocess.run(["pgrep", "-f", "gcs_server|raylet|dashboard_agent|runtime_env_agent|log_monitor"],
                           capture_output=True, text=True).stdout.split()  # fmt: skip
    return {int(pid) for pid in found}


def start_head(ray: Path, env: dict[str, str], cwd: Path) -> int:
    """A head node started with `ray start` once every earlier cluster's processes are gone (one still
    shutting down holds ports a new head needs), answering `ray status`; its GCS port."""
    deadline = time.monotonic() + 60
    while ray_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    port = free_port()
    head = subprocess.run([str(ray), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                           "--disable-usage-stats"], capture_output=True, timeout=120, cwd=cwd, env=env)  # fmt: skip
    assert head.returncode == 0, head.stderr.decode()[-2000:]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = [str(ray), "status", f"--address=127.0.0.1:{port}"]
        if subprocess.run(status, capture_output=True, timeout=60, env=env).returncode == 0:
            return port
        time.sleep(1)
    raise AssertionError(f"the head started with `ray start` does not answer `ray status` on port {port}")


def test_on_an_existing_cluster_sigterm_leaves_the_cluster_running(tiny_xlmr: Path, tmp_path: Path):
    """RAY_ADDRESS names a running cluster: the deployment goes onto it, and stopping `serve --ray` deletes
    the deployment (its proxy stops answering) but leaves the cluster as it was."""
    ray = Path(sys.executable).with_name("ray")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a local test cluster: no token to hand around
    before = raylets()
    port = start_head(ray, env, tmp_path)
    theirs = raylets() - before
    try:
        os.environ.update(RAY_ADDRESS=f"127.0.0.1:{port}", RAY_AUTH_MODE="disabled")
        try:
            server = launch(tmp_path, "-m", f"tiny={tiny_xlmr}", "--ray", "--replica-cpus", "0.5")
        finally:
            del os.environ["RAY_ADDRESS"], os.environ["RAY_AUTH_MODE"]
        answer = server.post("/v1/rerank", {"query": QUERY, "documents": DOCS})
        assert answer.status_code == 200 and "x-bge-rerank-replica" in answer.headers
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=90) in (-signal.SIGTERM, 128 + signal.SIGTERM)
        with pytest.raises(httpx.TransportError):
            httpx.get(server.url + "/health", timeout=2)
        assert theirs and theirs <= raylets()  # the cluster is still running
        assert "the Ray cluster at 127.0.0.1" in server.log.read_text()
    finally:
        subprocess.run([str(ray), "stop", "--force"], capture_output=True, timeout=120, env=env)


def test_replicas_need_ray_and_autoscale_a_valid_range(tiny_xlmr: Path):
    without = run_cli(["serve", "-m", str(tiny_xlmr), "--replicas", "2", "--port", "0"], timeout=60)
    assert without.returncode == 2 and b"--replicas and --autoscale need --ray" in without.stderr
    for bad in ("3:1", "0:2", "two"):
        refused = run_cli(
            ["serve", "-m", str(tiny_xlmr), "--ray", "--autoscale", bad, "--port", "0"], timeout=60
        )
        assert refused.returncode == 2 and b"must be MIN:MAX" in refused.stderr, refused.stderr.decode()


def test_a_cluster_that_cannot_be_reached_is_a_clear_error(tiny_xlmr: Path):
    unreachable = run_cli(["serve", "-m", str(tiny_xlmr), "--ray", "--port", "0"],
                          env={"RAY_ADDRESS": f"127.0.0.1:{free_port()}"}, timeout=120)  # fmt: skip
    assert unreachable.returncode == 2, unreachable.stderr.decode()
    assert b"could not connect to the Ray cluster at RAY_ADDRESS=127.0.0.1:" in unreachable.stderr


def test_autoscale_adds_a_replica_under_load(tiny_xlmr: Path, tmp_path: Path):
    """--autoscale 1:2 starts one replica; 8 clients in a closed loop keep more requests in flight than one
    replica's target, and Ray Serve adds the second (its upscale delay is 30 s)."""
    server = launch(
        tmp_path, "-m", f"tiny={tiny_xlmr}", "--ray", "--autoscale", "1:2", "--replica-cpus", "0.5"
    )
    try:
        first = {server.get("/info").json()["replica"]["id"] for _ in range(10)}
        assert len(first) == 1
        seen: Counter = Counter()
        deadline = time.monotonic() + 90
        while len(seen) < 2 and time.monotonic() < deadline:
            statuses, replicas, _ = load(server, 5)
            assert set(statuses) == {200}
            seen.update(replicas)
        assert len(seen) == 2, seen
    finally:
        stop(server)
