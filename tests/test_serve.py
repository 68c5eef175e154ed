"""`bge-rerank serve` as a real process on a free loopback port, called through real clients (the official
Cohere SDK for /v2/rerank, httpx for the rest), on the tiny on-disk model. Every request targets 127.0.0.1
and every loop is bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
KEY = "test-key-123"
QUERY = "如何读取JSON文件?"
DOCS = [
    "使用json.load()函数读取JSON文件：with open('data.json') as f: data = json.load(f)",
    "pandas.read_csv() 读取CSV文件。",
    "JSON文件和Python文件有什么区别？JSON文件是什么文件？",
    "Deep learning trains neural networks with many layers.",
    "使用json.load()函数读取JSON文件：with open('data.json') as f: data = json.load(f)",  # a tie with 0
]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {KEY}"}, timeout=60, **kw)

    def post(self, path: str, body: object, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {KEY}", **kw.pop("headers", {})}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=60, **kw)

    def metrics(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        values: dict[str, float] = {}
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for sample in family.samples:
                label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                values[sample.name + (f"{{{label}}}" if label else "")] = sample.value
                if set(sample.labels) == {"model"}:  # also summed over the models served
                    values[sample.name] = values.get(sample.name, 0.0) + sample.value
        return values


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(model: Path, tmp: Path, *args: str) -> Server:
    return launch(tmp, "-m", str(model), *args)


def launch(tmp: Path, *args: str) -> Server:
    """``bge-rerank serve ARGS`` on a free port with the test key, once ready (``/ready`` says 200)."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "bge_rerank_cli", "serve", "--port", str(port), "--api-key", KEY]
    proc = subprocess.Popen([*cmd, *args], stdout=subprocess.DEVNULL, stderr=log.open("wb"), cwd=REPO,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if server.get("/ready").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server did not become ready: {log.read_text()[-2000:]}")


def stop(server: Server) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
    return server.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(tiny_xlmr: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start(tiny_xlmr, tmp_path_factory.mktemp("serve"), "--gather-ms", "50", "--max-docs", "200")
    yield running
    stop(running)


def batch_scores(model: Path, docs: list[str], *more: str) -> list[dict]:
    """`bge-rerank score` on the same pairs, the reference for every dialect (``more``: its options)."""
    args = ["score", "-m", str(model), "-f", "jsonl", "--quiet", "-q", QUERY, *more]
    for doc in docs:
        args += ["-p", doc]
    result = run_cli(args)
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.splitlines()]


def expected_order(scores: list[dict]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i]["logit"], i))


def test_cohere_sdk_unchanged_gets_the_batch_tools_scores(server: Server, tiny_xlmr: Path):
    import cohere

    reference = batch_scores(tiny_xlmr, DOCS)
    client = cohere.ClientV2(base_url=server.url, api_key=KEY)
    response = client.rerank(model="bge-reranker-v2-m3", query=QUERY, documents=DOCS, top_n=4)
    order = expected_order(reference)[:4]
    assert [r.index for r in response.results] == order
    for result in response.results:
        assert result.relevance_score == pytest.approx(reference[result.index]["score"], abs=1e-5)
    assert response.meta is not None and response.meta.api_version.version == "2"
    assert response.meta.billed_units.search_units == 1
    assert response.id


def test_jina_tei_and_score_routes_match_the_batch_tool(server: Server, tiny_xlmr: Path):
    reference = batch_scores(tiny_xlmr, DOCS)
    order = expected_order(reference)
    jina = server.post(
        "/v1/rerank", {"model": "m", "query": QUERY, "documents": [{"text": d} for d in DOCS]}
    ).json()
    assert set(jina) == {"model", "usage", "results"} and jina["usage"]["total_tokens"] > 0
    assert [r["index"] for r in jina["results"]] == order
    for r in jina["results"]:
        assert r["relevance_score"] == pytest.approx(reference[r["index"]]["score"], abs=1e-5)
        assert r["document"] == {"text": DOCS[r["index"]]}
    without = server.post(
        "/v1/rerank", {"query": QUERY, "documents": DOCS, "top_n": 2, "return_documents": False}
    )
    assert [set(r) for r in without.json()["results"]] == [{"index", "relevance_score"}] * 2

    tei = server.post(
        "/rerank", {"query": QUERY, "texts": DOCS, "raw_scores": True, "return_text": True}
    ).json()
    assert [r["index"] for r in tei] == order
    for r in tei:
        assert r["score"] == pytest.approx(reference[r["index"]]["logit"], abs=1e-5)
        assert r["text"] == DOCS[r["index"]]
    sigmoid = server.post("/rerank", {"query": QUERY, "texts": DOCS}).json()
    assert [set(r) for r in sigmoid] == [{"index", "score"}] * len(DOCS)
    assert sigmoid[0]["score"] == pytest.approx(reference[order[0]]["score"], abs=1e-5)

    pairs = [{"id": i, "query": QUERY, "passage": d} for i, d in enumerate(DOCS)]
    scored = server.post("/score", {"pairs": pairs}).json()["results"]
    for got, want in zip(scored, reference, strict=True):
        assert set(got) == {"id", "query", "passage", "score", "logit", "truncated", "dropped_tokens"}
        assert got["logit"] == pytest.approx(want["logit"], abs=1e-5)
        assert (got["truncated"], got["dropped_tokens"]) == (want["truncated"], want["dropped_tokens"])


def test_concurrent_requests_share_forward_passes_and_stay_correct(server: Server, tiny_xlmr: Path):
    queries = [f"{QUERY} {i}" for i in range(32)]

    def one(query: str) -> list[dict]:
        return server.post("/v1/rerank", {"query": query, "documents": DOCS[:4]}).json()["results"]

    before = server.metrics()
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(one, queries))
    after = server.metrics()
    for query, results in zip(queries[:3], answers[:3], strict=True):  # spot-check scores for 3 of them
        args = ["score", "-m", str(tiny_xlmr), "-f", "jsonl", "--quiet", "-q", query]
        for doc in DOCS[:4]:
            args += ["-p", doc]
        reference = [json.loads(line) for line in run_cli(args).stdout.splitlines()]
        for r in results:
            assert r["relevance_score"] == pytest.approx(reference[r["index"]]["score"], abs=1e-5)
    assert all(len(r) == 4 for r in answers)
    shared = after["bge_rerank_shared_forward_passes_total"] - before.get(
        "bge_rerank_shared_forward_passes_total", 0
    )
    passes = after["bge_rerank_forward_passes_total"] - before["bge_rerank_forward_passes_total"]
    assert shared >= 1 and passes < 32  # pairs of several requests went through one forward pass
    assert after["bge_rerank_rerank_requests_total"] - before["bge_rerank_rerank_requests_total"] == 32
    assert after["bge_rerank_requests_total{route=/v1/rerank,status=200}"] >= 32
    assert 0 <= after["bge_rerank_top1_replacement_rate"] <= 1
    assert after["bge_rerank_pairs_scored_total"] - before["bge_rerank_pairs_scored_total"] == 32 * 4


def test_v1_models_lists_the_model_as_openai_style_clients_read_it(server: Server, tiny_xlmr: Path):
    listed = server.get("/v1/models")
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["object"] == "list" and len(body["data"]) == 1
    (entry,) = body["data"]
    assert entry["id"] == str(tiny_xlmr) and entry["object"] == "model" and entry["owned_by"] == "bge-rerank"
    assert isinstance(entry["created"], int) and abs(entry["created"] - time.time()) < 3600
    assert httpx.get(server.url + "/v1/models").status_code == 401  # behind the key, as /info is


def test_auth(server: Server):
    assert httpx.get(server.url + "/health").status_code == 200  # no key needed
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.post(
            server.url + "/v2/rerank", json={"query": "q", "documents": ["d"]}, headers=headers
        )
        assert response.status_code == 401
        assert "Traceback" not in response.text and KEY not in response.text
    assert httpx.get(server.url + "/metrics").status_code == 401
    ready = server.get("/ready").json()
    assert ready["status"] == "ready" and ready["random_weights"] is True and ready["backend"] == "torch"
    assert "stand-in model" in server.log.read_text()
    assert (
        server.get("/docs").status_code == 200 and server.get("/openapi.json").json()["paths"]["/v2/rerank"]
    )


BAD = [
    ("malformed JSON", "/v2/rerank", b'{"query": "q", "documents": [', 400, "malformed JSON"),
    ("not an object", "/v1/rerank", b"[1, 2]", 400, "must be a JSON object"),
    ("missing documents", "/v2/rerank", b'{"query": "q"}', 422, "documents"),
    ("wrong type", "/v1/rerank", b'{"query": 5, "documents": ["a"]}', 422, "query"),
    ("document without text", "/v1/rerank", b'{"query": "q", "documents": [{"id": 1}]}', 422, "documents[0]"),
    ("bad pair", "/score", b'{"pairs": [{"query": "q"}]}', 422, 'pairs[0]: missing "passage"'),
    (
        "too many documents",
        "/rerank",
        json.dumps({"query": "q", "texts": ["d"] * 201}).encode(),
        413,
        "limit is 200",
    ),
    ("unknown route", "/v3/rerank", b"{}", 404, "not found"),
    ("negative top_n", "/v2/rerank", b'{"query": "q", "documents": ["a"], "top_n": -1}', 422, "top_n"),
]


@pytest.mark.parametrize(("label", "path", "body", "status", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_status_never_a_traceback(server: Server, label, path, body, status, message):
    response = httpx.post(server.url + path, content=body, timeout=60,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == status, response.text
    assert message in response.json()["error"] and "Traceback" not in response.text
    good = server.post("/v2/rerank", {"query": QUERY, "documents": DOCS[:2]})
    assert good.status_code == 200 and len(good.json()["results"]) == 2


def test_empty_documents_give_an_empty_result(server: Server):
    assert server.post("/v2/rerank", {"query": "q", "documents": []}).json()["results"] == []
    assert server.post("/v1/rerank", {"query": "q", "documents": []}).json()["results"] == []
    assert server.post("/rerank", {"query": "q", "texts": []}).json() == []


# Distinct long passages (identical pairs are scored once): ~200 tokens each, a few seconds per 1000.
LONG = [f"passage {i}: " + " ".join(["json file read load parse"] * 40) + f" {i}" for i in range(1500)]


def test_limits_overload_disconnects_and_health_under_load(tiny_xlmr: Path, tmp_path: Path):
    """A 2 s gather window holds submissions in the queue long enough to act on them deterministically
    (the worker waits it out while fewer than a round's sequences, 2 x --batch-size, are queued)."""
    server = start(tiny_xlmr, tmp_path, "--max-docs", "1500", "--max-queue", "300", "--max-body-bytes", "3000000",
                   "--gather-ms", "2000", "--batch-size", "128")  # fmt: skip
    port = int(server.url.rsplit(":", 1)[1])
    try:
        huge = {"query": "json", "documents": ["x" * 5000] * 700}
        assert server.post("/v2/rerank", huge).status_code == 413  # over --max-body-bytes

        gone = socket.create_connection(("127.0.0.1", port))
        body = json.dumps({"query": "gone", "documents": LONG[:150]}).encode()
        gone.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
        time.sleep(0.5)  # tokenised and queued: the worker is still in its gather window
        gone.close()
        time.sleep(0.3)
        assert server.metrics()["bge_rerank_dropped_requests_total"] == 1  # left the queue at once
        answers: list[httpx.Response] = []
        queued = threading.Thread(target=lambda: answers.append(
            server.post("/v1/rerank", {"query": "q", "documents": LONG[:150]})))  # fmt: skip
        queued.start()
        time.sleep(0.5)
        assert server.metrics()["bge_rerank_queue_pairs"] == 150
        full = server.post("/v1/rerank", {"query": "q", "documents": LONG[:200]})
        assert full.status_code == 429 and int(full.headers["Retry-After"]) >= 1
        assert "Traceback" not in full.text
        queued.join(120)
        assert answers[0].status_code == 200 and len(answers[0].json()["results"]) == 150

        busy = threading.Thread(target=lambda: answers.append(
            server.post("/v2/rerank", {"query": "q", "documents": LONG})))  # fmt: skip
        busy.start()
        time.sleep(0.4)  # the model is scoring 1500 passages (a round above the gather size starts at once)
        started = time.monotonic()
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        assert time.monotonic() - started < 1  # health answers while the model is busy
        assert server.get("/ready").status_code == 200
        busy.join(120)
        assert answers[1].status_code == 200 and len(answers[1].json()["results"]) == len(LONG)
        after = server.metrics()
        assert after["bge_rerank_rejected_requests_total{reason=queue_full}"] == 1
        assert after["bge_rerank_rejected_requests_total{reason=body_too_large}"] == 1
        assert after["bge_rerank_queue_pairs"] == 0
    finally:
        stop(server)


def test_request_ids_and_json_access_log(tiny_xlmr: Path, tmp_path: Path):
    """X-Request-ID from a load balancer is echoed, logged and used as Cohere's id; a missing or unsafe one
    is replaced by a fresh UUID. --log-format json writes one parseable line per request, with no texts."""
    server = start(tiny_xlmr, tmp_path, "--log-format", "json")
    try:
        auth = {"Authorization": f"Bearer {KEY}"}
        body = {"query": QUERY, "documents": DOCS[:2]}
        given = httpx.post(server.url + "/v2/rerank", json=body, headers={**auth, "X-Request-ID": "lb-7f3a.9"},
                           timeout=60)  # fmt: skip
        assert given.status_code == 200
        assert given.headers["x-request-id"] == "lb-7f3a.9" and given.json()["id"] == "lb-7f3a.9"
        fresh = httpx.post(server.url + "/v2/rerank", json=body, headers=auth, timeout=60)
        rid = fresh.headers["x-request-id"]
        assert len(rid) == 36 and fresh.json()["id"] == rid
        unsafe = httpx.post(server.url + "/v1/rerank", json=body, timeout=60,
                            headers={**auth, "X-Request-ID": 'x" injected="1'})  # fmt: skip
        assert unsafe.status_code == 200 and unsafe.headers["x-request-id"] != 'x" injected="1'
        denied = httpx.post(server.url + "/rerank", json={"query": "q", "texts": ["a"]}, timeout=60,
                            headers={"X-Request-ID": "no-key-1"})  # fmt: skip
        assert denied.status_code == 401 and denied.headers["x-request-id"] == "no-key-1"
    finally:
        assert stop(server) in (-signal.SIGTERM, 128 + signal.SIGTERM)
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    by_id = {line["request_id"]: line for line in lines}
    assert by_id["lb-7f3a.9"]["path"] == "/v2/rerank" and by_id["lb-7f3a.9"]["status"] == 200
    assert by_id[rid]["status"] == 200 and by_id["no-key-1"]["status"] == 401
    assert unsafe.headers["x-request-id"] in by_id and "injected" not in server.log.read_text()
    assert set(by_id[rid]) == {"time", "client", "method", "path", "status", "ms", "request_id"}
    assert "json.load" not in server.log.read_text()  # document texts are never logged


def test_sigterm_finishes_the_request_in_flight_then_exits(tiny_xlmr: Path, tmp_path: Path):
    server = start(tiny_xlmr, tmp_path)
    answers: list[httpx.Response] = []
    request = threading.Thread(target=lambda: answers.append(
        server.post("/v2/rerank", {"query": "q", "documents": LONG[:900]})))  # fmt: skip
    request.start()
    time.sleep(1.0)
    server.proc.send_signal(signal.SIGTERM)
    request.join(120)
    code = server.proc.wait(timeout=60)
    assert answers and answers[0].status_code == 200 and len(answers[0].json()["results"]) == 900
    assert code in (-signal.SIGTERM, 128 + signal.SIGTERM)  # ends by its signal, as the batch commands do
    log = server.log.read_text()
    assert "Traceback" not in log and '"POST /v2/rerank" 200' in log
    assert "requests in flight finished" in log


def test_a_missing_model_ends_the_service_with_the_model_exit_code(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "bge_rerank_cli", "serve", "-m", str(tmp_path / "none"), "--port", str(free_port())],
        capture_output=True, cwd=REPO, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 4, result.stderr.decode()
    assert b"does not exist" in result.stderr and b"Traceback" not in result.stderr


def test_a_request_past_its_timeout_gets_503_and_leaves_the_queue(tiny_xlmr: Path, tmp_path: Path):
    server = start(tiny_xlmr, tmp_path, "--gather-ms", "3000", "--timeout", "0.5")
    try:
        started = time.monotonic()
        late = server.post("/v2/rerank", {"query": "q", "documents": DOCS})
        assert late.status_code == 503 and late.headers["Retry-After"] == "1"
        assert "not scored within 0.5s" in late.json()["error"] and time.monotonic() - started < 2.5
        after = server.metrics()
        assert after["bge_rerank_rejected_requests_total{reason=timeout}"] == 1
        assert after["bge_rerank_dropped_requests_total"] == 1 and after["bge_rerank_queue_pairs"] == 0
    finally:
        stop(server)


def test_a_missing_serve_extra_is_named():
    code = (
        "import sys\nsys.modules['uvicorn'] = None\nsys.argv = ['bge-rerank', 'serve', '-m', 'none']\n"
        "from bge_rerank_cli.cli import main\nmain()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert b"pip install 'bge-rerank-cli[serve]'" in result.stderr and b"Traceback" not in result.stderr


def test_only_loopback_binds_count_as_private():
    from bge_rerank_cli.cli.serve import _loopback

    assert _loopback("127.0.0.1") and _loopback("localhost") and _loopback("::1") and _loopback("127.0.0.5")
    assert not _loopback("0.0.0.0") and not _loopback("10.0.0.4") and not _loopback("example.org")
