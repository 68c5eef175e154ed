"""`bge-rerank serve` at its edges, as a real process on a loopback port through real clients (httpx, raw
sockets): no input yields a 5xx, overload and shutdown keep their promises, slow clients are cut, access
and logs hold. Every request targets 127.0.0.1 and every loop is bounded in count and time."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.test_serve import KEY, LONG, Server, start, stop

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ORIGIN = "https://app.example"
AUTH = {"Authorization": f"Bearer {KEY}"}
POST_ROUTES = ("/v2/rerank", "/v1/rerank", "/rerank", "/score")


@pytest.fixture(scope="module")
def edge(tiny_xlmr: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server with the guards set tight enough to test quickly."""
    running = start(tiny_xlmr, tmp_path_factory.mktemp("edges"), "--max-docs", "50", "--max-body-bytes", "200000",
                    "--header-timeout", "1", "--body-timeout", "1", "--max-connections", "8",
                    "--cors-origin", ORIGIN)  # fmt: skip
    yield running
    stop(running)


def raw(body: bytes, path: str, headers: dict[str, str] | None = None, url: str = "") -> httpx.Response:
    return httpx.post(url + path, content=body, timeout=60,
                      headers={**AUTH, "Content-Type": "application/json", **(headers or {})})  # fmt: skip


def assert_json_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    body = response.json()
    assert set(body) == {"error", "error_type", "message", "detail"} and "Traceback" not in response.text
    return body


def no_tracebacks(server: Server) -> None:
    log = server.log.read_text()
    assert "Traceback" not in log and "CancelledError" not in log and "Exception in ASGI" not in log, log[
        -3000:
    ]


# --- no input yields a 5xx ----------------------------------------------------------------------------

SURROGATE = [
    (
        "/v2/rerank",
        b'{"query": "q", "documents": ["a\\udc80"]}',
        "documents: holds a lone surrogate",
        "at [0]",
    ),
    ("/v2/rerank", b'{"query": "q", "documents": [{"text": "\\ud800x"}]}', "documents:", "at [0].text"),
    ("/v1/rerank", b'{"query": "q\\udc80", "documents": ["a"]}', "query: holds a lone surrogate", ""),
    ("/v1/rerank", b'{"model": "\\udfff", "query": "q", "documents": ["a"]}', "model:", ""),
    ("/rerank", b'{"query": "q", "texts": ["ok", "\\udc80"]}', "texts:", "at [1]"),
    ("/score", b'{"pairs": [{"query": "q", "passage": "p", "id": "\\udc80"}]}', "pairs:", "at [0].id"),
]


@pytest.mark.parametrize(("path", "body", "field", "place"), SURROGATE)
def test_a_lone_surrogate_is_422_naming_its_field_on_every_route(edge: Server, path, body, field, place):
    error = assert_json_error(raw(body, path, url=edge.url), 422)["error"]
    assert error.startswith(field) and place in error and "valid UTF-8" in error


def test_the_batch_tool_refuses_the_same_text(tiny_xlmr: Path):
    result = run_cli(
        ["score", "-m", str(tiny_xlmr), "-f", "jsonl"], stdin=b'{"query": "q", "passage": "a\\udc80"}\n'
    )
    assert result.returncode == 3 and b"line 1" in result.stderr and b"Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/rerank", {"query": "", "documents": ["a"]}),
        ("/v1/rerank", {"query": "   ", "documents": ["a"]}),
        ("/rerank", {"query": "", "texts": ["a"]}),
        ("/score", {"pairs": [{"query": "", "passage": "a"}]}),
        ("/v2/rerank", {"query": "", "documents": []}),
    ],
)
def test_the_empty_query_is_422_on_every_route(edge: Server, path, body):
    error = assert_json_error(edge.post(path, body), 422)["error"]
    assert "query" in error and "empty" in error


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Any code point, lone surrogates included (JSON carries them as \udXXX escapes).
TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None), max_size=30)
FIELD_VALUES = (
    JSON | TEXT | st.lists(TEXT | JSON, max_size=5) | st.integers(min_value=-(2**70), max_value=2**70)
)
KEYS = st.sampled_from(["query", "documents", "texts", "pairs", "top_n", "max_tokens_per_doc", "return_documents",
                        "raw_scores", "return_text", "model", "truncate", "passage", "text"])  # fmt: skip
SHAPED = st.dictionaries(KEYS, FIELD_VALUES, max_size=6) | st.builds(
    lambda q, docs, n: {"query": q, "documents": docs, "texts": docs, "top_n": n,
                        "pairs": [{"query": q, "passage": d} for d in docs if isinstance(d, str)]},
    TEXT, st.lists(TEXT | st.fixed_dictionaries({"text": TEXT}), max_size=6), st.integers(-3, 10**12),
)  # fmt: skip
BODIES = (
    SHAPED.map(lambda v: json.dumps(v).encode())
    | JSON.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=200)
    | TEXT.map(lambda t: t.encode("utf-8", "surrogatepass"))
)
PATHS = st.sampled_from([*POST_ROUTES, "/health", "/ready", "/metrics", "/docs", "/openapi.json", "/nope",
                         "/v2/rerank/", "/%00", "/x%0d%0ay"])  # fmt: skip
METHODS = st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "DELETE", "OPTIONS", "HEAD"])
CONTENT_TYPES = st.sampled_from(["application/json", "text/plain", "", "application/json; charset=latin-1"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=METHODS, path=PATHS, body=BODIES, content_type=CONTENT_TYPES, keyed=st.booleans())
def test_no_input_yields_a_5xx_or_a_traceback(edge: Server, method, path, body, content_type, keyed):
    headers = {**(AUTH if keyed else {}), **({"Content-Type": content_type} if content_type else {})}
    with httpx.Client(timeout=60) as client:
        response = client.request(method, edge.url + path, content=body, headers=headers)
    assert response.status_code < 500, response.text
    assert response.headers.get("x-request-id")
    if response.status_code >= 400 and method != "HEAD":
        assert_json_error(response, response.status_code)
    assert "Traceback" not in response.text


def test_an_exception_that_escapes_the_app_is_a_json_500_with_the_request_id():
    """The gate is the last word: a bug below it answers JSON with X-Request-ID, and logs one line."""
    import asyncio

    from bge_rerank_cli.service.app import AccessLog, Gate
    from bge_rerank_cli.service.metrics import Metrics

    async def broken(scope, receive, send):  # an app with a bug
        raise KeyError("boom")

    async def call() -> httpx.Response:
        gate = Gate(broken, metrics=Metrics(), api_key=None, max_body=100, access=AccessLog(), cors=False)
        transport = httpx.ASGITransport(app=gate)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v2/rerank", json={}, headers={"X-Request-ID": "bug-1"})

    response = asyncio.run(call())
    body = assert_json_error(response, 500)
    assert response.headers["x-request-id"] == "bug-1" and body["error_type"] == "Backend"


# --- overload ---------------------------------------------------------------------------------------


def test_overload_is_refused_before_tokenising_and_at_once(tiny_xlmr: Path, tmp_path: Path):
    """A 3 s gather window holds the first request in the queue; a second, bigger than the room left, is
    refused without being tokenised (the submitted-pairs counter holds the first request's pairs alone),
    in the time it takes to send and parse it."""
    server = start(tiny_xlmr, tmp_path, "--max-docs", "1500", "--max-queue", "1600", "--max-body-bytes", "20000000",
                   "--gather-ms", "3000", "--batch-size", "512")  # fmt: skip
    try:
        heavy = [f"{i} " + " ".join(["tokenise this passage slowly"] * 400) for i in range(1500)]
        answers: list[tuple[httpx.Response, float]] = []

        def admitted() -> None:
            started = time.monotonic()
            answers.append((server.post("/v2/rerank", {"query": "q", "documents": heavy[:200]}), started))

        first = threading.Thread(target=admitted)
        first.start()
        time.sleep(0.5)
        started = time.monotonic()
        refused = server.post("/v2/rerank", {"query": "q", "documents": heavy})
        refusal = time.monotonic() - started
        body = assert_json_error(refused, 429)
        assert "limit 1600" in body["error"] and 1 <= int(refused.headers["Retry-After"]) <= 30
        first.join(120)
        assert answers[0][0].status_code == 200
        after = server.metrics()
        assert (
            after["bge_rerank_submitted_pairs_total"] == 1 + 200
        )  # the warm-up pair and the admitted request
        assert after["bge_rerank_rejected_requests_total{reason=queue_full}"] == 1
        assert refusal < 2.0, refusal  # sending and parsing 18 MB; tokenising it would take several seconds
    finally:
        stop(server)
    no_tracebacks(server)


def test_the_timeout_covers_tokenising_and_abandoned_work_stops(tiny_xlmr: Path, tmp_path: Path):
    server = start(tiny_xlmr, tmp_path, "--timeout", "0.5", "--max-docs", "2000", "--max-body-bytes", "20000000",
                   "--batch-size", "2")  # fmt: skip
    try:
        started = time.monotonic()
        huge = server.post(
            "/v2/rerank", {"query": "q", "documents": ["word " * 2_000_000]}
        )  # 10 MB to tokenise
        assert_json_error(huge, 503)
        assert time.monotonic() - started < 2.0 and huge.headers["Retry-After"] == "1"

        many = server.post("/v2/rerank", {"query": "q", "documents": LONG})  # ~750 passes at batch size 2
        assert "not scored within 0.5s" in assert_json_error(many, 503)["error"]
        time.sleep(0.5)
        passes = server.metrics()["bge_rerank_forward_passes_total"]
        time.sleep(1.0)
        assert server.metrics()["bge_rerank_forward_passes_total"] == passes  # nobody waits: no pass runs
        assert server.metrics()["bge_rerank_rejected_requests_total{reason=timeout}"] == 2
        assert server.post("/v2/rerank", {"query": "q", "documents": ["a", "b"]}).status_code == 200
    finally:
        stop(server)
    no_tracebacks(server)


# --- shutdown -----------------------------------------------------------------------------------------


def test_when_the_drain_time_runs_out_requests_get_a_json_503_and_the_process_exits(
    tiny_xlmr: Path, tmp_path: Path
):
    server = start(tiny_xlmr, tmp_path, "--drain-seconds", "1", "--batch-size", "2", "--max-docs", "2000")
    answers: list[tuple[httpx.Response, float]] = []

    def call() -> None:
        response = server.post("/v2/rerank", {"query": "q", "documents": LONG})
        answers.append((response, time.monotonic()))

    request = threading.Thread(target=call)
    request.start()
    time.sleep(1.0)  # scoring (~750 passes)
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    request.join(60)
    code = server.proc.wait(timeout=30)
    exited = time.monotonic()
    response, answered = answers[0]
    body = assert_json_error(response, 503)
    assert "drain time ran out" in body["error"] and response.headers["Retry-After"] == "1"
    assert 0.9 <= answered - signalled < 2.0, answered - signalled
    assert exited - signalled < 3.0, exited - signalled  # about a second after the deadline
    assert code in (-signal.SIGTERM, 128 + signal.SIGTERM)
    no_tracebacks(server)
    assert "drain time (1s) ran out" in server.log.read_text()


# --- slow clients, connections, bodies ----------------------------------------------------------------


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_all(sock: socket.socket, limit: float = 10) -> bytes:
    sock.settimeout(limit)
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return out
        if not chunk:
            return out
        out += chunk


def test_a_client_trickling_its_headers_is_cut_at_the_total_bound(edge: Server):
    before = edge.metrics().get("bge_rerank_rejected_requests_total{reason=header_timeout}", 0)
    sock = connect(edge)
    started = time.monotonic()
    sock.sendall(b"POST /v2/rerank HTTP/1.1\r\n")
    closed = False
    for n in range(20):  # one header line every 0.3 s: each read is quick, the total is not
        time.sleep(0.3)
        try:
            sock.sendall(f"X-Slow-{n}: 1\r\n".encode())
        except OSError:
            closed = True
            break
    answer = read_all(sock, 3)
    sock.close()
    assert closed or answer
    assert answer.startswith(b"HTTP/1.1 408") and b'"error_type": "Validation"' in answer
    assert time.monotonic() - started < 4.0
    assert edge.metrics()["bge_rerank_rejected_requests_total{reason=header_timeout}"] == before + 1
    rid = re.search(rb"x-request-id: ([0-9a-f-]{36})", answer).group(1).decode()  # type: ignore[union-attr]
    logged = [line for line in edge.log.read_text().splitlines() if line.endswith(rid)]
    assert len(logged) == 1 and '"- -" 408 ' in logged[0]  # logged like any answer, though below the app


def test_a_client_that_stops_sending_its_body_is_cut(edge: Server):
    sock = connect(edge)
    started = time.monotonic()
    sock.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"query\": ")  # fmt: skip
    answer = read_all(sock, 5)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"body did not arrive within 1s" in answer
    rid = re.search(rb"x-request-id: ([0-9a-f-]{36})", answer).group(1).decode()  # type: ignore[union-attr]
    assert any(
        line.endswith(rid) and '"POST /v2/rerank" 408 ' in line for line in edge.log.read_text().splitlines()
    )
    assert time.monotonic() - started < 3.0
    assert edge.metrics()["bge_rerank_rejected_requests_total{reason=body_timeout}"] >= 1
    no_tracebacks(edge)


def test_past_the_connection_bound_a_new_connection_gets_503_and_the_rest_are_served(edge: Server):
    idle = [connect(edge) for _ in range(8)]
    try:
        time.sleep(0.2)
        extra = connect(edge)
        answer = read_all(extra, 3)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower()
        assert b"more than 8 connections" in answer
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    assert edge.post("/v2/rerank", {"query": "q", "documents": ["a"]}).status_code == 200
    assert edge.metrics()["bge_rerank_rejected_requests_total{reason=connections}"] >= 1


def test_many_slow_sockets_are_all_closed_within_the_header_bound(edge: Server):
    sockets = []
    for _ in range(6):
        sock = connect(edge)
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        sockets.append(sock)
    time.sleep(1.6)
    answers = [read_all(sock, 1) for sock in sockets]
    for sock in sockets:
        sock.close()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers)
    assert httpx.get(edge.url + "/health", timeout=10).status_code == 200


def test_a_chunked_body_over_the_limit_is_413_and_counted(edge: Server):
    before = edge.metrics().get("bge_rerank_rejected_requests_total{reason=body_too_large}", 0)

    def chunks() -> Iterator[bytes]:
        yield b'{"query": "q", "documents": ['
        for _ in range(300):
            yield b'"' + b"x" * 1000 + b'",'
        yield b'"y"]}'

    response = httpx.post(edge.url + "/v2/rerank", content=chunks(), timeout=60,
                          headers={**AUTH, "Content-Type": "application/json"})  # fmt: skip
    assert "limit is 200000" in assert_json_error(response, 413)["error"]
    assert "content-length" not in response.request.headers  # it was sent chunked
    assert edge.metrics()["bge_rerank_rejected_requests_total{reason=body_too_large}"] == before + 1


def test_a_port_in_use_is_one_error_line_and_exit_2(tmp_path: Path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "bge_rerank_cli", "serve", "-m", str(tmp_path / "none"), "--port", str(port)],
            capture_output=True, cwd=REPO, timeout=120,
        )  # fmt: skip
    err = result.stderr.decode()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, err
    assert len(errors) == 1 and f"port {port} on 127.0.0.1 is already in use" in errors[0] and "--port" in err
    assert "Traceback" not in err


# --- access and logs ----------------------------------------------------------------------------------


def test_a_cors_preflight_needs_no_key_and_the_request_still_does(edge: Server):
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
    answer = httpx.options(edge.url + "/v2/rerank", headers=preflight, timeout=10)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in answer.headers["access-control-allow-headers"].lower()
    other = httpx.options(edge.url + "/v2/rerank", headers={**preflight, "Origin": "https://evil.example"})
    assert_json_error(other, 400)  # the CORS middleware's plain-text refusal, in the service's shape
    body = {"query": "q", "documents": ["a"]}
    denied = httpx.post(edge.url + "/v2/rerank", json=body, headers={"Origin": ORIGIN}, timeout=10)
    assert denied.status_code == 401
    allowed = httpx.post(edge.url + "/v2/rerank", json=body, headers={"Origin": ORIGIN, **AUTH}, timeout=60)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN


def test_ready_answers_a_probe_without_the_key_with_its_status_alone(edge: Server):
    probe = httpx.get(edge.url + "/ready", timeout=10)
    assert probe.status_code == 200 and probe.json() == {"status": "ready"}
    keyed = edge.get("/ready").json()
    assert keyed["status"] == "ready" and keyed["backend"] == "torch" and "model" in keyed
    assert httpx.get(edge.url + "/metrics", timeout=10).status_code == 401


def test_info_says_what_answers(edge: Server, tiny_xlmr: Path):
    info = edge.get("/info")
    assert info.status_code == 200
    body = info.json()
    assert body["model"] == str(tiny_xlmr) and body["random_weights"] is True and body["revision"] is None
    assert {"backend", "device", "dtype", "max_length", "version"} <= set(body)
    assert httpx.get(edge.url + "/info", timeout=10).status_code == 401  # not for probes: it needs the key


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_matched_in_any_case(edge: Server, scheme: str):
    response = httpx.post(edge.url + "/v2/rerank", json={"query": "q", "documents": ["a"]}, timeout=60,
                          headers={"Authorization": f"{scheme} {KEY}"})  # fmt: skip
    assert response.status_code == 200
    wrong = httpx.post(edge.url + "/v2/rerank", json={"query": "q", "documents": ["a"]}, timeout=60,
                       headers={"Authorization": f"Basic {KEY}"})  # fmt: skip
    assert wrong.status_code == 401


def test_the_text_access_log_cannot_be_forged(edge: Server):
    forged = '127.0.0.1 "POST /v2/rerank" 200 1.0ms forged-id'
    response = httpx.get(edge.url + "/x%0d%0a127.0.0.1%20%22POST%20/v2/rerank%22%20200%201.0ms%20forged-id",
                         headers={"X-Request-ID": "forge-1"}, timeout=10)  # fmt: skip
    assert_json_error(response, 401)  # the curl, which sends no key
    time.sleep(0.2)
    lines = edge.log.read_text().splitlines()
    assert not any(line.startswith(forged) or line == forged for line in lines)
    mine = [line for line in lines if line.endswith(" forge-1")]
    assert len(mine) == 1 and re.search(r'"GET /x\\r\\n127\.0\.0\.1 \\"POST /v2/rerank\\" 200', mine[0]), mine
    assert re.search(r'forged-id" 401 [\d.]+ms forge-1$', mine[0]), mine  # the real status and id end it


def test_the_guarded_server_logged_no_traceback(edge: Server):
    """Last in this module: after the generated inputs, slow clients and refusals above, the log is clean."""
    no_tracebacks(edge)
