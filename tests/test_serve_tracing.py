"""OpenTelemetry traces of `bge-rerank serve --otlp-endpoint` (#22), sent to a real OTLP/HTTP receiver
this test runs on a loopback port (the protobuf decoded with ``opentelemetry-proto``): each request's
span with its children (tokenising, the queue wait, its forward passes; a pass shared by several
requests under each of them, linked to the others), the caller's ``traceparent`` as the parent, and no
query or document text anywhere in what is sent. Off, neither the SDK nor the exporter is imported."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_serve import Server, free_port, launch, stop

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

SECRET = "zebra-" + secrets.token_hex(4)  # in every query and document sent: never in a span


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver: every export request's raw body and its decoded spans."""

    url: str
    bodies: list[bytes] = field(default_factory=list)
    spans: list = field(default_factory=list)

    def wait_for(self, ready, timeout: float = 30.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready(self.spans):
                return self.spans
            time.sleep(0.1)
        raise AssertionError(f"spans not received in {timeout}s: {[s.name for s in self.spans]}")


def start_receiver() -> tuple[Receiver, ThreadingHTTPServer]:
    """An OTLP/HTTP receiver on a free loopback port, in a thread (``.shutdown()`` the server to stop)."""
    port = free_port()
    found = Receiver(f"http://127.0.0.1:{port}")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            request = trace_service.ExportTraceServiceRequest()
            request.ParseFromString(body)
            found.bodies.append(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    found.spans.extend(scope.spans)
            reply = trace_service.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200 if self.path == "/v1/traces" else 404)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    return found, http


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found, http = start_receiver()
    yield found
    http.shutdown()


@pytest.fixture(scope="module")
def traced(receiver: Receiver, tiny_xlmr: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "100"  # export every 100 ms (the server inherits it)
    try:
        running = launch(tmp_path_factory.mktemp("traced"), "-m", f"tiny={tiny_xlmr}", "--gather-ms", "200",
                         "--otlp-endpoint", receiver.url)  # fmt: skip
    finally:
        del os.environ["OTEL_BSP_SCHEDULE_DELAY"]
    yield running
    stop(running)


def attrs(span) -> dict:
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = value.string_value or value.int_value or value.bool_value or value.double_value
    return out


def test_a_request_span_has_the_callers_parent_and_its_children(traced: Server, receiver: Receiver):
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    answer = traced.post(
        "/v2/rerank",
        {"model": "tiny", "query": f"what is a {SECRET}?", "documents": [f"a {SECRET} is a horse", "apples"]},
        headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "X-Request-ID": "traced-1"},
    )
    assert answer.status_code == 200, answer.text

    def mine(spans):
        return [s for s in spans if s.trace_id.hex() == trace_id]

    spans = mine(receiver.wait_for(lambda spans: any(s.name == "forward pass" for s in mine(spans))))
    (request,) = [s for s in spans if s.name == "POST /v2/rerank"]
    assert request.parent_span_id.hex() == parent_id  # the caller's traceparent is the parent
    assert request.kind == request.SPAN_KIND_SERVER
    found = attrs(request)
    assert found["http.route"] == "/v2/rerank" and found["http.response.status_code"] == 200
    assert found["bge_rerank.request_id"] == "traced-1"
    assert found["bge_rerank.model"] == "tiny" and found["bge_rerank.documents"] == 2
    children = {s.name: s for s in spans if s.parent_span_id == request.span_id}
    assert {"tokenize", "queue wait", "forward pass"} <= set(children)
    for child in children.values():
        assert request.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano
        assert child.end_time_unix_nano <= request.end_time_unix_nano
    assert attrs(children["forward pass"])["bge_rerank.pass_pairs"] >= 2


def test_a_pass_shared_by_several_requests_is_under_each_and_linked(traced: Server, receiver: Receiver):
    ids = [secrets.token_hex(16) for _ in range(4)]

    def ask(trace_id: str) -> int:
        body = {"query": f"{SECRET} {trace_id[:4]}", "documents": [f"{SECRET} doc {n}" for n in range(3)]}
        headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        return traced.post("/v1/rerank", body, headers=headers).status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(ask, ids)) == [200] * 4

    def passes(spans):
        return [s for s in spans if s.name == "forward pass" and s.trace_id.hex() in ids]

    def shared(spans):
        by_pass: dict[int, list] = {}
        for span in passes(spans):
            by_pass.setdefault(attrs(span)["bge_rerank.pass"], []).append(span)
        return [group for group in by_pass.values() if len(group) > 1]

    groups = shared(
        receiver.wait_for(lambda spans: bool(shared(spans)) and len({s.trace_id for s in passes(spans)}) == 4)
    )
    for group in groups:
        requests = {s.parent_span_id for s in group}
        assert len(requests) == len(group)  # one span of the pass under each request that took part
        assert attrs(group[0])["bge_rerank.pass_requests"] == len(group)
        for span in group:
            linked = {link.span_id for link in span.links}
            assert linked == requests - {span.parent_span_id}  # linked to the others


def test_no_query_or_document_text_is_sent(traced: Server, receiver: Receiver):
    traced.post("/score", {"pairs": [{"query": SECRET, "passage": SECRET * 3}]})
    receiver.wait_for(lambda spans: any(s.name == "POST /score" for s in spans))
    sent = b"".join(receiver.bodies)
    assert sent and SECRET.encode() not in sent


def test_tracing_off_imports_neither_the_sdk_nor_the_exporter():
    # (the OpenTelemetry API may be: FastAPI imports it for its own telemetry hooks)
    code = ("import sys, bge_rerank_cli.service.app; "
            "print(any(m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter')) for m in sys.modules))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO, timeout=120)
    assert result.stdout.strip() == b"False", result.stderr.decode()


def test_a_bad_endpoint_is_refused_at_start(tiny_xlmr: Path):
    result = subprocess.run(
        [sys.executable, "-m", "bge_rerank_cli", "serve", "-m", str(tiny_xlmr), "--port", "0",
         "--otlp-endpoint", "collector:4318"], capture_output=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and b"is not an http(s) URL" in result.stderr
