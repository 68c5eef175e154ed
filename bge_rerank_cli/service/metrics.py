"""Prometheus metrics of the service (seed manual §6.2: response time and the top-1 replacement rate),
through prometheus-client, on a registry of the app's own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

PREFIX = "bge_rerank"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Request, batching, queue, score-cache and quality counters, the model ones labelled by model; also
    the score cache's :class:`~bge_rerank_cli.service.cache.CacheObserver`, and (:meth:`for_model`) each
    model's batcher :class:`~bge_rerank_cli.batcher.Observer`."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.latency = Histogram(f"{PREFIX}_request_duration_seconds", "Request latency by route.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        m = ["model"]  # the name the model is served under (its id when not named)
        self.pairs = Counter(f"{PREFIX}_pairs_scored", "Pairs scored (after de-duplication per request).", m,
                             registry=r)  # fmt: skip
        self.tokens = Counter(
            f"{PREFIX}_tokens_scored", "Real (unpadded) tokens read by the model.", m, registry=r
        )
        self.truncated = Counter(f"{PREFIX}_truncated_pairs", "Pairs that lost tokens to the max length.", m,
                                 registry=r)  # fmt: skip
        self.submitted_pairs = Counter(f"{PREFIX}_submitted_pairs",
                                       "Pairs admitted, tokenised and queued for the model.", m, registry=r)  # fmt: skip
        self.forward_passes = Counter(
            f"{PREFIX}_forward_passes", "Forward passes of the model.", m, registry=r
        )
        self.shared_passes = Counter(f"{PREFIX}_shared_forward_passes",
                                     "Forward passes that carried pairs of more than one request.", m, registry=r)  # fmt: skip
        self.pairs_per_pass = Histogram(f"{PREFIX}_forward_pass_pairs", "Pairs (sequences) per forward pass.", m,
                                        buckets=SIZE_BUCKETS, registry=r)  # fmt: skip
        self.requests_per_pass = Histogram(f"{PREFIX}_forward_pass_requests", "Requests per forward pass.", m,
                                           buckets=SIZE_BUCKETS, registry=r)  # fmt: skip
        self.queue = Gauge(f"{PREFIX}_queue_pairs", "Pairs waiting for the model worker.", m, registry=r)
        self.rejected = Counter(f"{PREFIX}_rejected_requests", "Requests refused before scoring, by reason.",
                                ["reason"], registry=r)  # fmt: skip
        self.dropped_requests = Counter(f"{PREFIX}_dropped_requests",
                                        "Requests dropped from the queue (client gone or timed out).", m, registry=r)  # fmt: skip
        self.rerank_requests = Counter(f"{PREFIX}_rerank_requests", "Rerank requests with at least one document.",
                                       m, registry=r)  # fmt: skip
        self.top1_replaced = Counter(f"{PREFIX}_top1_replaced", "Rerank requests whose best document was not first.",
                                     m, registry=r)  # fmt: skip
        self.top1_rate = Gauge(f"{PREFIX}_top1_replacement_rate",
                               "Share of rerank requests whose best document was not first in the input.", m,
                               registry=r)  # fmt: skip
        self.cache_hits = Counter(f"{PREFIX}_cache_hits", "Distinct pairs of a request the score cache answered.",
                                  ["model"], registry=r)  # fmt: skip
        self.cache_misses = Counter(f"{PREFIX}_cache_misses",
                                    "Distinct pairs the score cache was asked for and did not hold.", ["model"],
                                    registry=r)  # fmt: skip
        self.cache_failures = Counter(f"{PREFIX}_cache_failures",
                                      "Score cache stores that failed (the service then runs uncached).", ["model"],
                                      registry=r)  # fmt: skip
        self.cache_up = Gauge(f"{PREFIX}_cache_up", "1 while the score cache works, 0 once it failed and is off.",
                              ["model"], registry=r)  # fmt: skip
        self._reranks: dict[str, tuple[int, int]] = {}  # model -> (rerank requests, top-1 replaced)

    def for_model(self, model: str) -> ModelObserver:
        """The batcher's :class:`~bge_rerank_cli.batcher.Observer` for one served model: its series
        shown from the start, at 0."""
        for metric in (self.pairs, self.tokens, self.truncated, self.submitted_pairs, self.forward_passes,
                       self.shared_passes, self.queue, self.dropped_requests):  # fmt: skip
            metric.labels(model)
        return ModelObserver(self, model)

    # CacheObserver (called from worker threads)
    def cache_lookup(self, model: str, hits: int, misses: int) -> None:
        self.cache_hits.labels(model).inc(hits)
        self.cache_misses.labels(model).inc(misses)

    def cache_state(self, model: str, working: bool) -> None:
        self.cache_up.labels(model).set(1 if working else 0)
        if working:  # the counters shown from the start, at 0
            self.cache_hits.labels(model)
            self.cache_misses.labels(model)
            self.cache_failures.labels(model)
        else:
            self.cache_failures.labels(model).inc()

    def scored(self, model: str, pairs: int, tokens: int, truncated: int) -> None:
        self.pairs.labels(model).inc(pairs)
        self.tokens.labels(model).inc(tokens)
        self.truncated.labels(model).inc(truncated)

    def reranked(self, model: str, replaced: bool) -> None:
        reranks, replacements = self._reranks.get(model, (0, 0))
        reranks, replacements = reranks + 1, replacements + replaced
        self._reranks[model] = (reranks, replacements)
        self.rerank_requests.labels(model).inc()
        if replaced:
            self.top1_replaced.labels(model).inc()
        self.top1_rate.labels(model).set(replacements / reranks)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelObserver:
    """One served model's batcher reports (called from its model worker thread; prometheus-client is
    thread-safe)."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.metrics = metrics
        self.model = model

    def submitted(self, pairs: int) -> None:
        self.metrics.submitted_pairs.labels(self.model).inc(pairs)

    def forward_pass(self, pairs: int, requests: int, tokens: int) -> None:
        m = self.metrics
        m.forward_passes.labels(self.model).inc()
        m.pairs_per_pass.labels(self.model).observe(pairs)
        m.requests_per_pass.labels(self.model).observe(requests)
        if requests > 1:
            m.shared_passes.labels(self.model).inc()

    def queue_depth(self, pairs: int) -> None:
        self.metrics.queue.labels(self.model).set(pairs)

    def dropped(self) -> None:
        self.metrics.dropped_requests.labels(self.model).inc()
