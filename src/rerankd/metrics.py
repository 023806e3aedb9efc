"""Prometheus metrics. One `Metrics` per app (its own registry), so tests and replicas never share counters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TOKEN_BUCKETS = (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_MODEL = ("model",)

Metric = TypeVar("Metric", Counter, Gauge, Histogram)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        add = self.add
        self.requests = add(Counter, "rerankd_requests", "HTTP requests by route and status.", ("route", "status"))
        self.request_seconds = add(
            Histogram, "rerankd_request_duration_seconds", "Request latency.", ("route",), buckets=LATENCY_BUCKETS
        )
        self.documents = add(Counter, "rerankd_documents", "Documents reranked.", _MODEL)
        self.batch_size = add(
            Histogram, "rerankd_batch_size", "Inputs per batch.", _MODEL, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
        )
        self.batch_tokens = add(
            Histogram, "rerankd_batch_tokens", "Padded tokens per batch.", _MODEL, buckets=_TOKEN_BUCKETS
        )
        self.batch_seconds = add(
            Histogram, "rerankd_batch_duration_seconds", "Inference time per batch.", _MODEL, buckets=LATENCY_BUCKETS
        )
        self.queue_pairs = add(Gauge, "rerankd_queue_pairs", "Pairs waiting in the queue.", _MODEL)
        self.queue_tokens = add(Gauge, "rerankd_queue_tokens", "Tokens waiting in the queue.", _MODEL)
        self.inflight_tokens = add(Gauge, "rerankd_inflight_tokens", "Padded tokens in the running batch.", _MODEL)
        self.queue_seconds = add(
            Gauge,
            "rerankd_queue_seconds",
            "Expected wait of a new request: admitted work in seconds (what max_queue_seconds limits).",
            _MODEL,
        )
        self.ready = add(Gauge, "rerankd_ready", "1 once every model is loaded and warmed.")
        self.strategies = add(Counter, "rerankd_strategy", "Requests by the strategy that ran.", ("model", "strategy"))
        self.score_cache_hits = add(
            Counter, "rerankd_score_cache_hits", "Model inputs answered from the score cache.", _MODEL
        )
        self.score_cache_misses = add(
            Counter, "rerankd_score_cache_misses", "Model inputs not in the score cache (run by the model).", _MODEL
        )
        self.score_cache_bytes = add(Gauge, "rerankd_score_cache_bytes", "Bytes held by the score cache.", _MODEL)
        self.embedding_cache_hits = add(
            Counter, "rerankd_embedding_cache_hits", "Document embeddings found in the cache.", _MODEL
        )
        self.embedding_cache_misses = add(
            Counter, "rerankd_embedding_cache_misses", "Document embeddings computed (not in the cache).", _MODEL
        )
        self.embedding_cache_entries = add(
            Gauge, "rerankd_embedding_cache_entries", "Document embeddings held in the cache.", _MODEL
        )
        self.vector_cache_hits = add(
            Counter, "rerankd_vector_cache_hits", "Late-interaction document vectors found in the cache.", _MODEL
        )
        self.vector_cache_misses = add(
            Counter, "rerankd_vector_cache_misses", "Late-interaction documents encoded (not in the cache).", _MODEL
        )
        self.vector_cache_bytes = add(
            Gauge, "rerankd_vector_cache_bytes", "Bytes held by the late-interaction vector cache.", _MODEL
        )

    def add(
        self, kind: type[Metric], name: str, documentation: str, labels: Sequence[str] = (), **options: Any
    ) -> Metric:
        """A metric of this app's registry."""
        return kind(name, documentation, labels, registry=self.registry, **options)

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
