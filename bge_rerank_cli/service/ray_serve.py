"""``bge-rerank serve --ray``: the same app as a Ray Serve deployment, behind Ray Serve's HTTP proxy on
the same ``--host``/``--port``.

Each replica builds the app the single-process server runs (:func:`~bge_rerank_cli.service.app.create_app`)
from the same settings: its own models, model workers and dynamic batchers, its own API-key gate, limits
and metrics. Ray Serve's proxy spreads requests over the replicas (``--replicas N``, or ``--autoscale
MIN:MAX`` on the requests each replica has in flight) and replaces a replica whose process dies. The
cluster is the one ``RAY_ADDRESS`` names, or a local one started here and stopped on exit.

Each answer says which replica gave it (``X-BGE-Rerank-Replica``), as ``/info`` does with the replica's
process id; ``/metrics`` is the answering replica's own registry (scrape each replica, or Ray's metrics).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from .models import Catalog

APP = "bge-rerank"
INSTALL_HINT = "pip install 'bge-rerank-cli[ray,serve]'"


@dataclass(frozen=True)
class Scale:
    """How many replicas: a fixed count, or an autoscaling range; and the CPUs each one reserves."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    cpus: float = 1.0

    @staticmethod
    def parse_autoscale(text: str) -> tuple[int, int]:
        low, sep, high = text.partition(":")
        if not (sep and low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high)):
            raise UsageError(f"--autoscale {text!r} must be MIN:MAX with 1 <= MIN <= MAX, e.g. 1:4.")
        return int(low), int(high)

    def options(self) -> dict[str, Any]:
        """The deployment's replica options for Ray Serve."""
        if self.autoscale is None:
            return {"num_replicas": self.replicas}
        low, high = self.autoscale
        return {"autoscaling_config": {"min_replicas": low, "max_replicas": high, "initial_replicas": low,
                                       "target_ongoing_requests": 4}}  # fmt: skip


@dataclass(frozen=True)
class ReplicaSettings:
    """Everything a replica needs to build the app, picklable: the models and every service setting."""

    catalog: Catalog
    limits: Any  # core.Limits
    api_key: str | None
    cors_origins: tuple[str, ...]
    log_format: str
    drain_seconds: float
    score_cache: str | None
    score_cache_max_size: str | None
    score_cache_retry: float
    otlp_endpoint: str | None


class Replica:
    """One Ray Serve replica: Ray Serve asks it for its ASGI app after constructing it (in the replica's
    process), and for its health every few seconds (a model that failed to load: unhealthy, replaced)."""

    def __init__(self, settings: ReplicaSettings) -> None:
        self.settings = settings
        self.models: Any = None

    def __serve_build_asgi_app__(self) -> Any:
        """The app, its models loaded first: Ray Serve sends a replica requests only once this returns
        (a model that fails to load fails the replica's start, and Ray Serve tries another)."""
        from .app import say_ready

        app, self.models = build_replica_app(self.settings)
        self.models.load()
        for engine in self.models.engines.values():
            say_ready(engine, self.models.several)
        return app

    def check_health(self) -> None:
        if self.models is not None and self.models.error is not None:
            raise RuntimeError(f"a model failed to load: {self.models.error}")


def build_replica_app(settings: ReplicaSettings) -> tuple[Any, Any]:
    """The app of one replica and its :class:`~bge_rerank_cli.service.models.Models`."""
    from ..score_cache import SERVICE_BUSY_TIMEOUT, open_store
    from .app import create_app
    from .core import Engine
    from .metrics import Metrics
    from .models import Models
    from .server import Drain
    from .tracing import Tracing

    engines = {
        m.name: Engine(
            m.config, m.options, settings.limits, name=m.name, score_cache_retry=settings.score_cache_retry,
            score_cache=open_store(settings.score_cache, settings.score_cache_max_size,
                                   busy_timeout=SERVICE_BUSY_TIMEOUT) if settings.score_cache else None,
        )
        for m in settings.catalog.models
    }  # fmt: skip
    models = Models(engines, settings.catalog.default, settings.catalog.aliases)
    tracing = Tracing(settings.otlp_endpoint, service_name="bge-rerank") if settings.otlp_endpoint else None
    replica = _replica_id()

    def fatal(exc: BaseException) -> None:  # a model that cannot load: this replica reports unhealthy
        print(
            f"bge-rerank serve: replica {replica}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True
        )

    app = create_app(models, metrics=Metrics(), api_key=settings.api_key, cors_origins=settings.cors_origins,
                     log_format=settings.log_format, on_fatal=fatal, drain=Drain(settings.drain_seconds),
                     tracing=tracing, replica=replica)  # fmt: skip
    return app, models


class ReplicaLost:
    """ASGI middleware of Ray Serve's HTTP proxy. When the replica holding a request is gone (its process
    died mid-request), the proxy ends the request without an answer (and uvicorn sends a bare 500), or
    with a plain-text 500 (every error of the app is JSON); the client gets a JSON 503 with
    ``Retry-After: 1`` instead, which clients retry. The app's own answers pass unchanged."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"started": False, "held": False}

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = {k.lower(): v for k, v in message.get("headers", [])}
                if message["status"] == 500 and not headers.get(b"content-type", b"").startswith(
                    b"application/json"
                ):
                    state["held"] = True
                    return
                state["started"] = True
            elif message["type"] == "http.response.body" and state["held"]:
                if not message.get("more_body", False):
                    await _replica_lost(send)
                    state["started"] = True
                return
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            if state["started"]:
                raise
            await _replica_lost(send)
            return
        if not state["started"]:  # the proxy gave up on the request without an answer (uvicorn's bare 500)
            await _replica_lost(send)


async def _replica_lost(send: Any) -> None:
    import json

    from .schemas import error_body

    text = "the replica serving this request is gone (its process ended); send the request again."
    body = json.dumps(error_body(text, "Unhealthy")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"retry-after", b"1")]  # fmt: skip
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def proxy_middlewares() -> list[Any]:
    """What Ray Serve's proxy runs around every request (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``)."""
    from starlette.middleware import Middleware

    return [Middleware(ReplicaLost)]


def _replica_id() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # not in a replica (a test building the app directly)
        return f"pid-{os.getpid()}"


def run(
    settings: ReplicaSettings,
    scale: Scale,
    host: str,
    port: int,
    *,
    say: Callable[[str], None],
) -> int | None:
    """Deploy on Ray Serve and wait for SIGTERM/SIGINT; then delete the deployment (each replica drains
    for ``drain_seconds``) and stop the cluster if it was started here. Returns the signal that stopped
    it."""
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise UsageError(f"serve --ray needs {exc.name}, which is not installed: {INSTALL_HINT}") from None
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)
    address = os.environ.get("RAY_ADDRESS") or None
    stopping = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        stopping.set()

    env = {
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"),
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": f"{__name__}.proxy_middlewares",
    }
    if address:
        _reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING,
                 runtime_env={"env_vars": env})  # fmt: skip
    except ConnectionError as exc:
        raise UsageError(
            f"could not connect to the Ray cluster at RAY_ADDRESS={address}: {' '.join(str(exc).split())[:300]}",
            hint="Check the address (host:6379, or ray://host:10001 from outside the cluster), that the cluster "
            "is up (`ray status`), and its authentication token (RAY_AUTH_TOKEN) if it requires one.",
        ) from None
    started_here = address is None
    # After ray.init: it installs handlers of its own (a SIGTERM would end the process at once).
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        quiet = {"log_level": "WARNING", "enable_access_log": False}  # the app writes its own access log
        # The proxy is started by the Serve controller: the proxy middleware's import path goes to both.
        serve.start(http_options={"host": host, "port": port}, logging_config=quiet,
                    controller_options={"runtime_env": {"env_vars": env}})  # fmt: skip
        deployment = serve.deployment(
            name=APP,
            ray_actor_options={"num_cpus": scale.cpus},
            graceful_shutdown_timeout_s=settings.drain_seconds,
            graceful_shutdown_wait_loop_s=0.5,
            health_check_period_s=2,
            logging_config=quiet,
            max_ongoing_requests=64,  # a replica batches concurrent requests: let them reach it
            **scale.options(),
        )(serve.ingress()(Replica))
        where = "the Ray cluster at " + address if address else "a local Ray cluster"
        say(f"bge-rerank serve: {', '.join(settings.catalog.names)} on {where}, "
            f"{_replicas(scale)} at {scale.cpus:g} CPU each, on http://{host}:{port} (deploying)")  # fmt: skip
        serve.run(deployment.bind(settings), name=APP, route_prefix="/", blocking=False)
        say("bge-rerank serve: deployed; GET /ready says when the models are loaded")
        while not stopping.wait(0.5):
            pass
        say("bge-rerank serve: stopping the deployment (each replica drains its requests)")
        serve.delete(APP)
        serve.shutdown()
    finally:
        if started_here:
            ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return received[0] if received else None


def _reachable(address: str) -> None:
    """A ``host:port`` (or ``ray://host:port``) that nothing answers on fails in seconds, not after
    Ray's minute of retries."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not (host and port.isdigit()):
        return  # "auto" and the like: Ray finds it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=3).close()
    except OSError as exc:
        raise UsageError(
            f"could not connect to the Ray cluster at RAY_ADDRESS={address}: {exc.strerror or exc}.",
            hint="Check the address (host:6379, or ray://host:10001 from outside the cluster) and that the "
            "cluster is up (`ray status`).",
        ) from None


def _replicas(scale: Scale) -> str:
    if scale.autoscale is None:
        return f"{scale.replicas} replica{'s' if scale.replicas != 1 else ''}"
    return f"{scale.autoscale[0]} to {scale.autoscale[1]} replicas (autoscaled)"
