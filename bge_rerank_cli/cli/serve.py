"""`bge-rerank serve`: the reranker over HTTP (Cohere v2, Jina/vLLM and TEI dialects), same scores."""

from __future__ import annotations

import ipaddress
import math
import os
from typing import Annotated, Any

import typer

from ..config import Choice, ScoreOptions
from ..errors import BgeRerankError, ExitCode, UsageError
from . import options as opt
from .console import say
from .exits import error_line, flag_name, reported_errors

SERVICE = "Service"
LIMITS = "Limits"
RAY = "Ray Serve"


class LogFormat(Choice):
    TEXT = "text"
    JSON = "json"


@opt.serve_loader_options()
@opt.long_docs_options()
def serve(
    config: opt.ServeFlags,
    options: ScoreOptions,
    config_file: Annotated[
        str | None,
        typer.Option(
            "--config",
            metavar="FILE",
            envvar="BGE_RERANK_SERVE_CONFIG",
            help="A TOML file of the models to serve ([models.NAME] tables whose keys mirror the loader and "
            "long-passage flags, default = NAME, [aliases]); see docs/serving.md.",
            show_default=False,
            rich_help_panel=SERVICE,
        ),
    ] = None,
    host: Annotated[
        str,
        typer.Option(
            envvar="BGE_RERANK_HOST", help="Address to bind (loopback by default).", rich_help_panel=SERVICE
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            envvar="BGE_RERANK_PORT",
            min=0,
            max=65535,
            help="Port to listen on (0: a free one, printed at start). In use: exit 2.",
            rich_help_panel=SERVICE,
        ),
    ] = 8080,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="BGE_RERANK_API_KEY",
            metavar="KEY",
            show_default=False,
            help="Require 'Authorization: Bearer KEY' on every route but /health.",
            rich_help_panel=SERVICE,
        ),
    ] = None,
    max_docs: Annotated[
        int,
        typer.Option(
            envvar="BGE_RERANK_MAX_DOCS",
            min=1,
            help="Documents (or pairs) per request; more: 413.",
            rich_help_panel=LIMITS,
        ),
    ] = 1000,
    max_body_bytes: Annotated[
        int,
        typer.Option(
            envvar="BGE_RERANK_MAX_BODY_BYTES",
            min=1,
            help="Request body size; more: 413.",
            rich_help_panel=LIMITS,
        ),
    ] = 10 * 2**20,
    max_queue: Annotated[
        int,
        typer.Option(
            envvar="BGE_RERANK_MAX_QUEUE",
            min=1,
            help="Pairs waiting for the model; past it: 429 with Retry-After.",
            rich_help_panel=LIMITS,
        ),
    ] = 10_000,
    timeout: Annotated[
        float,
        typer.Option(
            envvar="BGE_RERANK_TIMEOUT",
            min=0.001,
            help="Seconds a request may wait and run; then 503.",
            rich_help_panel=LIMITS,
        ),
    ] = 60.0,
    gather_ms: Annotated[
        float,
        typer.Option(
            envvar="BGE_RERANK_GATHER_MS",
            min=0.0,
            help="How long the model worker waits for other requests to share a forward pass.",
            rich_help_panel=SERVICE,
        ),
    ] = 5.0,
    drain_seconds: Annotated[
        float,
        typer.Option(
            envvar="BGE_RERANK_DRAIN_SECONDS",
            min=0.0,
            help="On SIGTERM/SIGINT: stop accepting, finish requests in flight for at most this long.",
            rich_help_panel=SERVICE,
        ),
    ] = 30.0,
    header_timeout: Annotated[
        float,
        typer.Option(
            envvar="BGE_RERANK_HEADER_TIMEOUT",
            min=0.1,
            help="Seconds a client has to send a request's headers, in total; then 408 and closed.",
            rich_help_panel=LIMITS,
        ),
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(
            envvar="BGE_RERANK_BODY_TIMEOUT",
            min=0.1,
            help="Seconds a client has to send a request's body, after its headers; then 408 and closed.",
            rich_help_panel=LIMITS,
        ),
    ] = 30.0,
    max_connections: Annotated[
        int,
        typer.Option(
            envvar="BGE_RERANK_MAX_CONNECTIONS",
            min=1,
            help="Open connections at once; past it a new one gets 503 and is closed.",
            rich_help_panel=LIMITS,
        ),
    ] = 1024,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            metavar="ORIGIN",
            help="Allow browser calls from this origin (repeatable). Off by default.",
            rich_help_panel=SERVICE,
        ),
    ] = None,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            envvar="BGE_RERANK_LOG_FORMAT",
            help="Access log on stderr: one line per request.",
            rich_help_panel=SERVICE,
        ),
    ] = LogFormat.TEXT,
    otlp_endpoint: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            envvar=["BGE_RERANK_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"],
            help="Send OpenTelemetry traces over OTLP/HTTP to this collector (a base URL such as "
            "http://127.0.0.1:4318 gets /v1/traces). Off by default. Needs the otel extra.",
            show_default=False,
            rich_help_panel=SERVICE,
        ),
    ] = None,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            envvar="BGE_RERANK_SERVE_RAY",
            help="Run as a Ray Serve deployment on the cluster RAY_ADDRESS names (or a local one started "
            "here), behind Ray Serve's proxy on --host/--port: the same routes, dialects, auth, limits and "
            "metrics, each replica with its own models and batchers.",
            rich_help_panel=RAY,
        ),
    ] = False,
    replicas: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="N",
            envvar="BGE_RERANK_REPLICAS",
            help="With --ray: replicas of the app.",
            rich_help_panel=RAY,
        ),
    ] = 1,
    autoscale: Annotated[
        str | None,
        typer.Option(
            metavar="MIN:MAX",
            envvar="BGE_RERANK_AUTOSCALE",
            help="With --ray: autoscale between MIN and MAX replicas on the requests in flight (instead of "
            "--replicas).",
            show_default=False,
            rich_help_panel=RAY,
        ),
    ] = None,
    replica_cpus: Annotated[
        float,
        typer.Option(
            min=0.01,
            metavar="CPUS",
            envvar="BGE_RERANK_REPLICA_CPUS",
            help="With --ray: CPUs each replica reserves.",
            rich_help_panel=RAY,
        ),
    ] = 1.0,
    score_cache: opt.ScoreCacheOption = None,
    score_cache_max_size: opt.ScoreCacheMaxSize = None,
    score_cache_retry: Annotated[
        float,
        typer.Option(
            envvar="BGE_RERANK_SCORE_CACHE_RETRY",
            min=0.1,
            help="Seconds after a score cache fails (a server gone, a damaged file) before it is tried again; "
            "until then requests are scored uncached.",
            rich_help_panel=opt.SPEED,
        ),
    ] = 30.0,
) -> None:
    """Serve the reranker over HTTP: Cohere v2 (POST /v2/rerank), Jina/vLLM (POST /v1/rerank), TEI (POST /rerank) and pair scores (POST /score), with /health, /ready, /info, /v1/models, /metrics (Prometheus) and the OpenAPI page (/docs).

    Scores equal `bge-rerank score` on the same pairs and options. Concurrent requests share forward passes (one model worker per model). Several models (--model NAME=ID repeated, or --config FILE): a request picks one by its model field (TEI's /rerank and /score: the default model unless it names one); each has its own worker and queue (the limits apply to each). With --score-cache, pairs scored before (by the service or a batch job with the same settings) are answered from the cache and only the others reach the model. Stops on SIGTERM/SIGINT after the requests in flight (--drain-seconds).

    \b
    Needs the serve extra:  pip install 'bge-rerank-cli[serve]'

    \b
    Examples:
      bge-rerank serve --port 8080
      bge-rerank serve -m bge=BAAI/bge-reranker-v2-m3 -m qwen=Qwen/Qwen3-Reranker-0.6B
      curl -s localhost:8080/v2/rerank -H 'Content-Type: application/json' -d '{"query": "what is deep learning?", "documents": ["Deep learning is ...", "Apples are ..."], "top_n": 1}'
    """
    with reported_errors():
        try:
            import fastapi  # noqa: F401
            import prometheus_client  # noqa: F401
            import uvicorn
        except ImportError as exc:
            from ..service import INSTALL_HINT

            raise UsageError(f"serve needs {exc.name}, which is not installed: {INSTALL_HINT}") from None
        from ..service.app import AccessLog, create_app
        from ..service.core import Engine, Limits
        from ..service.metrics import Metrics
        from ..service.models import Models, catalog, check_memory
        from ..service.server import ConnectionLimits, Drain, Server, bind, guarded_protocol

        if api_key is not None and not api_key.strip():
            raise UsageError("--api-key is empty.")
        if api_key is None and not _loopback(host):
            say(f"[yellow]warning:[/] serving on {host} without --api-key: anyone who can reach this port can use "
                "the model and fill its queue. Set --api-key (or BGE_RERANK_API_KEY), or bind 127.0.0.1.")  # fmt: skip
        served = catalog(config.models, config.base, options, config_file)
        # Before anything loads, refused with the figures: every model (in each replica of a local Ray
        # cluster; on a cluster RAY_ADDRESS names, the replicas' nodes are not this machine).
        if not (ray and os.environ.get("RAY_ADDRESS")):
            from ..service.ray_serve import Scale

            copies = (Scale.parse_autoscale(autoscale)[1] if autoscale else replicas) if ray else 1
            check_memory(served.models, copies=copies)
        limits = Limits(max_docs, max_body_bytes, max_queue, timeout, gather_ms / 1000)
        if not ray and (autoscale is not None or replicas != 1):
            raise UsageError("--replicas and --autoscale need --ray.")
        if ray:
            _serve_on_ray(served, limits, host, port, api_key=api_key, cors=tuple(cors_origin or ()),
                          log_format=str(log_format), drain_seconds=drain_seconds, score_cache=score_cache,
                          score_cache_max_size=score_cache_max_size, score_cache_retry=score_cache_retry,
                          otlp_endpoint=otlp_endpoint, replicas=replicas, autoscale=autoscale,
                          replica_cpus=replica_cpus)  # fmt: skip
            return
        engines = {
            m.name: Engine(
                m.config,
                m.options,
                limits,
                score_cache=opt.open_score_cache(score_cache, score_cache_max_size, service=True),
                score_cache_retry=score_cache_retry,
                name=m.name,
            )
            for m in served.models
        }
        models = Models(engines, served.default, served.aliases)
        tracing = None
        if otlp_endpoint:
            from ..service.tracing import Tracing

            tracing = Tracing(otlp_endpoint)
        metrics, drain = Metrics(), Drain(drain_seconds)
        fatal: list[BaseException] = []
        server: Server | None = None

        def on_fatal(exc: BaseException) -> None:
            fatal.append(exc)
            if server is not None:
                server.should_exit = True

        app = create_app(models, metrics=metrics, api_key=api_key, cors_origins=tuple(cors_origin or ()),
                         log_format=log_format, on_fatal=on_fatal, drain=drain, tracing=tracing)  # fmt: skip
        listening = bind(host, port)  # before the model loads: a port in use fails at once
        protocol = guarded_protocol(ConnectionLimits(header_timeout, body_timeout, max_connections), metrics,
                                    AccessLog(log_format).write)  # fmt: skip
        uv_config = uvicorn.Config(
            app,
            http=protocol,
            log_level="warning",
            access_log=False,
            lifespan="on",
            # A backstop only: the drain deadline answers and closes what is left about a second earlier.
            timeout_graceful_shutdown=math.ceil(drain_seconds) + 2,
        )
        server = Server(uv_config, drain)
        port = listening.getsockname()[1]
        say(
            f"[dim]bge-rerank serve: {', '.join(models.engines)} on http://{host}:{port} (loading; GET /ready says "
            "when it is up)[/]"
        )
        server.run(sockets=[listening])  # re-raises the signal that stopped it: exit 143 or 130 by it
        if server.signalled is not None and not fatal:
            # Still here: the signal did not end the process, as for PID 1 in a container (the kernel keeps
            # a namespace's init from its own default-action signals). Exit with the status it would give.
            raise typer.Exit(128 + server.signalled)
        if fatal:
            failure = fatal[0]
            if isinstance(failure, BgeRerankError):
                error_line(failure.describe(flag_name))
                raise typer.Exit(int(failure.exit_code))
            error_line(f"the model could not be loaded: {type(failure).__name__}: {failure}")
            raise typer.Exit(int(ExitCode.MODEL))


def _serve_on_ray(served: Any, limits: Any, host: str, port: int, *, api_key: str | None, cors: tuple[str, ...],
                  log_format: str, drain_seconds: float, score_cache: str | None, score_cache_max_size: str | None,
                  score_cache_retry: float, otlp_endpoint: str | None, replicas: int, autoscale: str | None,
                  replica_cpus: float) -> None:  # fmt: skip
    """``serve --ray``: the deployment until SIGTERM/SIGINT, then gone (and a cluster started here with it);
    the process then ends by that signal, as the single-process server does."""
    import os
    import signal

    from ..service import ray_serve
    from ..service.server import bind

    bind(host, port).close()  # a port in use fails now, before a cluster starts
    if otlp_endpoint:
        from ..service.tracing import traces_url

        traces_url(otlp_endpoint)  # a bad URL fails now, not in each replica
    if score_cache:
        opt.open_score_cache(score_cache, score_cache_max_size, service=True).close()  # reachable, valid
    settings = ray_serve.ReplicaSettings(served, limits, api_key, cors, log_format, drain_seconds, score_cache,
                                         score_cache_max_size, score_cache_retry, otlp_endpoint)  # fmt: skip
    scale = ray_serve.Scale(replicas, ray_serve.Scale.parse_autoscale(autoscale) if autoscale else None,
                            replica_cpus)  # fmt: skip
    stopped_by = ray_serve.run(settings, scale, host, port, say=lambda line: say(f"[dim]{line}[/]"))
    if stopped_by is not None:
        signal.signal(stopped_by, signal.SIG_DFL)
        os.kill(os.getpid(), stopped_by)
        raise typer.Exit(128 + stopped_by)  # PID 1 in a container: the kernel ignores its own signal


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
