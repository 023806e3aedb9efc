"""The fleet's Prometheus metrics, registered beside the app's own (`Metrics.registry`) on the ingress.

Per-replica numbers come with each answer (`ReplicaReport`), so they are as fresh as the replica's last answer;
a replica that has answered nothing for `FORGET_SECONDS` is dropped from the labels.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

from rerankd.fleet.replica import ReplicaReport
from rerankd.metrics import LATENCY_BUCKETS, Metrics

FORGET_SECONDS = 300.0
_REPLICA = ("replica",)


class FleetMetrics:
    def __init__(self, metrics: Metrics) -> None:
        add = metrics.add
        self.replicas = add(Gauge, "rerankd_fleet_replicas", "Model replicas by state (Ray Serve).", ("state",))
        self.outstanding_requests = add(
            Gauge, "rerankd_fleet_outstanding_requests", "Requests sent to model replicas and not yet answered."
        )
        self.outstanding_tokens = add(Gauge, "rerankd_fleet_outstanding_tokens", "Estimated tokens of those requests.")
        self.replica_queue_tokens = add(
            Gauge, "rerankd_fleet_replica_queue_tokens", "Tokens queued on a replica (at its last answer).", _REPLICA
        )
        self.replica_queue_pairs = add(
            Gauge, "rerankd_fleet_replica_queue_pairs", "Pairs queued on a replica (at its last answer).", _REPLICA
        )
        self.replica_inflight_tokens = add(
            Gauge,
            "rerankd_fleet_replica_inflight_tokens",
            "Padded tokens in a replica's running batch (at its last answer).",
            _REPLICA,
        )
        self.replica_seconds = add(
            Histogram,
            "rerankd_fleet_replica_request_duration_seconds",
            "Time a request spent on a replica.",
            _REPLICA,
            buckets=LATENCY_BUCKETS,
        )
        self.retries = add(
            Counter, "rerankd_fleet_retries", "Requests sent again because their replica died mid-request."
        )
        self.lost = add(Counter, "rerankd_fleet_lost", "Requests that failed on two replicas in a row (answered 500).")
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
