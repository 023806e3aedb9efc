"""The fleet's Prometheus metrics, registered beside the app's own (`Metrics.registry`) on the ingress.

Per-replica numbers come with each answer (`ReplicaReport`), so they are as fresh as the replica's last answer;
a replica that has answered nothing for `FORGET_SECONDS` is dropped from the labels.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

from rerankd.fleet.replica import ReplicaReport
from rerankd.metrics import Metrics

_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
FORGET_SECONDS = 300.0


class FleetMetrics:
    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.replicas = Gauge("rerankd_fleet_replicas", "Model replicas by state (Ray Serve).", ["state"], registry=r)
        self.outstanding_requests = Gauge(
            "rerankd_fleet_outstanding_requests", "Requests sent to model replicas and not yet answered.", registry=r
        )
        self.outstanding_tokens = Gauge(
            "rerankd_fleet_outstanding_tokens", "Estimated tokens of those requests.", registry=r
        )
        self.replica_queue_tokens = Gauge(
            "rerankd_fleet_replica_queue_tokens", "Tokens queued on a replica (at its last answer).", ["replica"],
            registry=r,
        )  # fmt: skip
        self.replica_queue_pairs = Gauge(
            "rerankd_fleet_replica_queue_pairs", "Pairs queued on a replica (at its last answer).", ["replica"],
            registry=r,
        )  # fmt: skip
        self.replica_inflight_tokens = Gauge(
            "rerankd_fleet_replica_inflight_tokens", "Padded tokens in a replica's running batch (at its last answer).",
            ["replica"], registry=r,
        )  # fmt: skip
        self.replica_seconds = Histogram(
            "rerankd_fleet_replica_request_duration_seconds", "Time a request spent on a replica.", ["replica"],
            buckets=_SECONDS_BUCKETS, registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "rerankd_fleet_retries", "Requests sent again because their replica died mid-request.", registry=r
        )
        self.lost = Counter(
            "rerankd_fleet_lost", "Requests that failed on two replicas in a row (answered 500).", registry=r
        )
        self._seen: dict[str, float] = {}

    def report(self, report: ReplicaReport) -> None:
        self._seen[report.replica] = time.monotonic()
        self.replica_queue_tokens.labels(report.replica).set(report.queued_tokens)
        self.replica_queue_pairs.labels(report.replica).set(report.queued_pairs)
        self.replica_inflight_tokens.labels(report.replica).set(report.inflight_tokens)
        self.replica_seconds.labels(report.replica).observe(report.seconds)

    def replica_states(self, states: dict[str, int]) -> None:
        for state in ("STARTING", "RUNNING", "UPDATING", "RECOVERING", "STOPPING"):
            self.replicas.labels(state).set(states.get(state, 0))
        cutoff = time.monotonic() - FORGET_SECONDS
        for replica in [name for name, seen in self._seen.items() if seen < cutoff]:
            del self._seen[replica]
            for metric in (
                self.replica_queue_tokens,
                self.replica_queue_pairs,
                self.replica_inflight_tokens,
                self.replica_seconds,
            ):
                metric.remove(replica)
