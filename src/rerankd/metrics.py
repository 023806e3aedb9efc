"""Prometheus metrics. One `Metrics` per app (its own registry), so tests and replicas never share counters."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rerankd_requests", "HTTP requests by route and status.", ["route", "status"], registry=r
        )
        self.request_seconds = Histogram(
            "rerankd_request_duration_seconds", "Request latency.", ["route"], buckets=_LATENCY_BUCKETS, registry=r
        )
        self.documents = Counter("rerankd_documents", "Documents reranked.", ["model"], registry=r)
        self.batch_size = Histogram(
            "rerankd_batch_size",
            "Inputs per batch.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.batch_tokens = Histogram(
            "rerankd_batch_tokens", "Padded tokens per batch.", ["model"], buckets=_TOKEN_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "rerankd_batch_duration_seconds",
            "Inference time per batch.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_pairs = Gauge("rerankd_queue_pairs", "Pairs waiting in the queue.", ["model"], registry=r)
        self.queue_tokens = Gauge("rerankd_queue_tokens", "Tokens waiting in the queue.", ["model"], registry=r)
        self.inflight_tokens = Gauge(
            "rerankd_inflight_tokens", "Padded tokens in the running batch.", ["model"], registry=r
        )
        self.queue_seconds = Gauge(
            "rerankd_queue_seconds",
            "Expected wait of a new request: admitted work in seconds (what max_queue_seconds limits).",
            ["model"],
            registry=r,
        )
        self.ready = Gauge("rerankd_ready", "1 once every model is loaded and warmed.", registry=r)
        self.strategies = Counter(
            "rerankd_strategy", "Requests by the strategy that ran.", ["model", "strategy"], registry=r
        )
        self.score_cache_hits = Counter(
            "rerankd_score_cache_hits", "Model inputs answered from the score cache.", ["model"], registry=r
        )
        self.score_cache_misses = Counter(
            "rerankd_score_cache_misses",
            "Model inputs not in the score cache (run by the model).",
            ["model"],
            registry=r,
        )
        self.score_cache_bytes = Gauge(
            "rerankd_score_cache_bytes", "Bytes held by the score cache.", ["model"], registry=r
        )
        self.embedding_cache_hits = Counter(
            "rerankd_embedding_cache_hits", "Document embeddings found in the cache.", ["model"], registry=r
        )
        self.embedding_cache_misses = Counter(
            "rerankd_embedding_cache_misses", "Document embeddings computed (not in the cache).", ["model"], registry=r
        )
        self.embedding_cache_entries = Gauge(
            "rerankd_embedding_cache_entries", "Document embeddings held in the cache.", ["model"], registry=r
        )

    def batch_observer(self, model: str) -> Callable[[int, int, float], None]:
        def observe(inputs: int, padded_tokens: int, seconds: float) -> None:
            self.batch_size.labels(model).observe(inputs)
            self.batch_tokens.labels(model).observe(padded_tokens)
            self.batch_seconds.labels(model).observe(seconds)

        return observe

    def watch_queue(self, model: str, stats: Callable[[], object]) -> None:
        """Gauges read the scheduler's live numbers at scrape time."""
        self.queue_pairs.labels(model).set_function(lambda: stats().queued_pairs)  # type: ignore[attr-defined]
        self.queue_tokens.labels(model).set_function(lambda: stats().queued_tokens)  # type: ignore[attr-defined]
        self.inflight_tokens.labels(model).set_function(lambda: stats().inflight_tokens)  # type: ignore[attr-defined]

    def watch_admission(self, model: str, queued_seconds: Callable[[str], float]) -> None:
        self.queue_seconds.labels(model).set_function(lambda: queued_seconds(model))

    def render(self) -> bytes:
        return generate_latest(self.registry)
