"""OpenTelemetry traces of the service (``serve --otlp-endpoint URL``), sent over OTLP/HTTP (protobuf).

Off by default, and then nothing here is imported. On, each request is a span (a W3C ``traceparent``
from the caller becomes its parent) with the route, method, status, request id, model and document
count; under it, the score cache lookup, the tokenising, the wait in the model's queue, and each forward
pass the request took part in. A pass carries the pairs of several requests: each of them gets a span of
that pass under its own request span, all with the same ``bge_rerank.pass`` number and linked to the
other requests' spans. No query, document or passage text is ever an attribute.

The exporter is OpenTelemetry's own (``opentelemetry-exporter-otlp-proto-http``) with a batching span
processor; the provider is this server's own, not the process-wide one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from .. import __version__
from ..errors import UsageError

INSTALL_HINT = "pip install 'bge-rerank-cli[otel]'"
_passes = itertools.count(1)


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for ``endpoint``: a base URL (``http://collector:4318``, as
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` holds it) gets ``/v1/traces``; a URL with a path is used as it is."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(
            f"--otlp-endpoint {endpoint!r} is not an http(s) URL, such as http://127.0.0.1:4318."
        )
    return endpoint.rstrip("/") + "/v1/traces" if parts.path in ("", "/") else endpoint


class Tracing:
    """A tracer exporting to one OTLP/HTTP endpoint, and the spans the service makes with it."""

    def __init__(self, endpoint: str, *, service_name: str = "bge-rerank") -> None:
        url = traces_url(endpoint)
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise UsageError(
                f"--otlp-endpoint needs {exc.name}, which is not installed: {INSTALL_HINT}"
            ) from None
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.url = url
        resource = Resource.create({"service.name": service_name, "service.version": __version__})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        self.tracer = self.provider.get_tracer("bge_rerank_cli", __version__)
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()

    # --- the request span (the gate) ---------------------------------------------------------------

    def start_request(
        self, method: str, route: str, path: str, headers: Mapping[bytes, bytes], rid: str
    ) -> Any:
        """The request's span, its parent the caller's ``traceparent`` (if any), made current; returns
        ``(span, token)`` for :meth:`end_request`."""
        from opentelemetry import context
        from opentelemetry.trace import SpanKind

        carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers.items()}
        parent = self._propagator.extract(carrier)
        span = self.tracer.start_span(
            f"{method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "http.route": route,
                "url.path": path,
                "bge_rerank.request_id": rid,
            },
        )
        token = context.attach(self._trace.set_span_in_context(span, parent))
        return span, token

    def end_request(self, started: Any, status: int) -> None:
        from opentelemetry import context
        from opentelemetry.trace import Status, StatusCode

        span, token = started
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        context.detach(token)

    # --- spans under the current request ---------------------------------------------------------------

    def annotate(self, **attributes: Any) -> None:
        """Attributes of the current request span (``bge_rerank.`` added to each name)."""
        span = self._trace.get_current_span()
        for name, value in attributes.items():
            if value is not None:
                span.set_attribute(f"bge_rerank.{name}", value)

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[None]:
        """A child span of the current one, around a block (tokenising, the cache lookup)."""
        attrs = {f"bge_rerank.{k}": v for k, v in attributes.items() if v is not None}
        with self.tracer.start_as_current_span(name, attributes=attrs):
            yield

    def current(self) -> Any:
        """The current span's context, to hand to the model worker with a submission."""
        return self._trace.get_current_span().get_span_context()

    # --- the model worker's spans (called from its thread) -------------------------------------------

    def waited(self, request: Any, submitted_ns: int, taken_ns: int, pairs: int) -> None:
        """The wait of a request's sequences in the model's queue, from submission to their round."""
        self._child(request, "queue wait", submitted_ns, taken_ns, {"bge_rerank.pairs": pairs}, ())

    def forward_pass(
        self, requests: Sequence[Any], start_ns: int, end_ns: int, pairs: int, tokens: int
    ) -> None:
        """One forward pass: a span under each request that took part, linked to the others."""
        from opentelemetry.trace import Link

        number = next(_passes)
        attributes = {"bge_rerank.pass": number, "bge_rerank.pass_pairs": pairs, "bge_rerank.pass_tokens": tokens,
                      "bge_rerank.pass_requests": len(requests)}  # fmt: skip
        for request in requests:
            links = [Link(other) for other in requests if other is not request]
            self._child(request, "forward pass", start_ns, end_ns, attributes, links)

    def _child(self, parent: Any, name: str, start_ns: int, end_ns: int, attributes: dict[str, Any],
               links: Sequence[Any]) -> None:  # fmt: skip
        from opentelemetry.trace import NonRecordingSpan

        context = self._trace.set_span_in_context(NonRecordingSpan(parent))
        span = self.tracer.start_span(name, context=context, start_time=start_ns, attributes=attributes,
                                      links=list(links))  # fmt: skip
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        """Send the spans still buffered, then stop (at the end of the service)."""
        self.provider.shutdown()
