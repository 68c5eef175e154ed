"""The service's HTTP server: uvicorn, with the connection-level guards it lacks and a shutdown that keeps
its deadline.

- **Header and body deadlines.** uvicorn has a keep-alive timeout but none for reading a request: a client
  that trickles one header line every few seconds holds its connection for as long as it likes. The
  :class:`GuardedProtocol` (uvicorn's h11 protocol) gives each request ``header_seconds`` in total, from its
  first byte (or the connection's start) to the end of its headers, and ``body_seconds`` from there to the
  end of its body, as hyper's header-read timeout does; past either the client gets a JSON 408 and the
  connection is closed.
- **A bound on open connections.** Past ``max_connections`` a new connection gets a JSON 503 with
  ``Retry-After`` and is closed at once, so idle or slow sockets cannot exhaust the process.
- **JSON everywhere.** uvicorn's own answer to a request it cannot parse (plain-text 400) is JSON in the
  service's error shape too.
- **Drain with a deadline.** On SIGTERM/SIGINT the :class:`Server` stops accepting and lets requests in
  flight finish for ``drain_seconds``; when that runs out, :class:`Drain` tells the app, whose requests
  still waiting answer a JSON 503 with ``Retry-After`` (their model work is abandoned before its next
  forward pass), and connections still open are closed, so the process exits about a second after the
  deadline, by its signal (exit 143 for SIGTERM).

The guards' counts go to the ``bge_rerank_rejected_requests_total`` metric (reasons ``header_timeout``,
``body_timeout``, ``connections``, ``bad_http``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import UsageError, option
from .metrics import Metrics
from .schemas import error_body


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection bounds: seconds to send a request's headers (in total), then its body, and the
    most connections open at once."""

    header_seconds: float = 10.0
    body_seconds: float = 30.0
    max_connections: int = 1024


@dataclass
class Drain:
    """The shutdown deadline shared by the server and the app: ``expired`` is set when ``seconds`` have
    passed since the first SIGTERM/SIGINT."""

    seconds: float = 30.0
    expired: asyncio.Event = field(default_factory=asyncio.Event)
    begun: bool = False


def raw_json_response(status: int, reason: str, message: str, kind: str, headers: dict[str, str]) -> bytes:
    """A complete HTTP/1.1 response (closing the connection) in the app's error shape, for answers given
    below the app, where no request cycle exists."""
    body = json.dumps(error_body(message, kind)).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
             "connection: close", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# An access-log line for an answer given below the app: (client, method, path, status, seconds, request id).
AccessWriter = Callable[[str, str, str, int, float, str], None]


def guarded_protocol(
    limits: ConnectionLimits, metrics: Metrics, access: AccessWriter | None = None
) -> type[H11Protocol]:
    """uvicorn's h11 protocol with ``limits`` enforced, counted in ``metrics`` and logged by ``access``."""

    class GuardedProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _timed: Any = None  # the request cycle the body deadline belongs to
        _since = 0.0  # when the current request (or the connection) began

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._since = time.perf_counter()
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                metrics.rejected.labels("connections").inc()
                message = f"more than {limits.max_connections} connections are open; try again shortly."
                self._refuse(503, "Service Unavailable", message, "Overloaded", {"retry-after": "1"})
                return
            self._arm(limits.header_seconds, "header_timeout")

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
                self._since = time.perf_counter()
                self._arm(limits.header_seconds, "header_timeout")  # a new request on a kept-alive connection
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._disarm()  # idle now: uvicorn's keep-alive timeout takes over

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            metrics.rejected.labels("bad_http").inc()
            self._refuse(400, "Bad Request", f"invalid HTTP request: {msg}", "Validation", {})

        def _follow(self) -> None:
            """Move from the header deadline to the body deadline, and off it, as the request arrives."""
            cycle = self.cycle
            if cycle is None or cycle is self._timed or self.transport.is_closing():
                if cycle is not None and self.conn.their_state is not h11.SEND_BODY:
                    self._disarm()  # the whole body is in
                return
            self._timed = cycle  # headers complete: a new request cycle began
            self._disarm()
            if self.conn.their_state is h11.SEND_BODY:
                self._arm(limits.body_seconds, "body_timeout")

        def _arm(self, seconds: float, reason: str) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expire, seconds, reason)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self, seconds: float, reason: str) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            metrics.rejected.labels(reason).inc()
            part = "headers" if reason == "header_timeout" else "body"
            message = f"the request's {part} did not arrive within {seconds:g}s."
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True  # the app sees the client gone and drops the request
                self.cycle.message_event.set()
            self._refuse(408, "Request Timeout", message, "Validation", {})

        def _refuse(self, status: int, reason: str, message: str, kind: str, headers: dict[str, str]) -> None:
            """Answer ``status`` and close. With a request under way, the gate logs it (it reads the status
            from the request's state) under the request's id; otherwise the answer is logged here."""
            in_app = self.cycle is not None and not self.cycle.response_complete
            state: dict[str, Any] = self.scope.get("state", {}) if in_app else {}
            rid = state.get("request_id") or str(uuid.uuid4())
            if not in_app or not self.cycle.response_started:
                response = raw_json_response(status, reason, message, kind, {**headers, "x-request-id": rid})
                self.transport.write(response)
                state["answered"] = status
            self.transport.close()
            if access is not None and not in_app:
                client = self.client[0] if self.client else "-"
                access(client, "-", "-", status, time.perf_counter() - self._since, rid)

    return GuardedProtocol


class Server(uvicorn.Server):
    """uvicorn's server with :class:`Drain`'s deadline: requests in flight get ``drain.seconds`` after the
    first signal; then the app answers what is left with 503 and the connections still open are closed."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain
        self.signalled: int | None = None  # the first SIGTERM/SIGINT received
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.signalled is None:
            self.signalled = sig
        if not self.drain.begun and self._loop is not None:
            self.drain.begun = True
            self._loop.call_soon_threadsafe(self._loop.call_later, self.drain.seconds, self._expire)
        super().handle_exit(sig, frame)

    def _expire(self) -> None:
        self.drain.expired.set()
        assert self._loop is not None
        self._loop.call_later(0.3, self._close_connections)  # after the 503s are written

    def _close_connections(self) -> None:
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a :class:`UsageError` saying why not and what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        where = f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"port {port} on {host} is already in use: stop what holds it (`ss -ltnp 'sport = :{port}'` "
                f"shows it) or choose another with {option('port')}."
            ) from None
        if exc.errno == errno.EACCES:
            raise UsageError(
                f"cannot bind {where}: permission denied (ports below 1024 need privileges); "
                f"choose another with {option('port')}."
            ) from None
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            raise UsageError(
                f"cannot bind {where}: {host} is not an address of this machine; check {option('host')}."
            ) from None
        raise UsageError(f"cannot bind {where}: {exc.strerror or exc}.") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
