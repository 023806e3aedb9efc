"""The work-aware routing policy (`fleet/routing.py`) as a Ray Serve `RequestRouter`: Ray's hooks feed the ledger,
the policy ranks the replicas. docs/fleet.md (Routing)."""

from __future__ import annotations

import random
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from rerankd.fleet.routing import Work, WorkLedger, origin_id, rank_replicas
from rerankd.vocabulary import WORK_AWARE_POLICIES, WorkAwarePolicy


def work_of(pending_request: PendingRequest | None) -> Work | None:
    """The request's `Work`, if it carries one. Ray ships the router class pickled by value, so the router's `Work`
    is a copy of the caller's class, not the same object: match by name, not by isinstance."""
    work = pending_request.kwargs.get("work") if pending_request is not None else None
    return work if type(work).__name__ == Work.__name__ else None


class WorkAwareRouter(RequestRouter):
    """Ray Serve request router running `rank_replicas` over a `WorkLedger`; it returns every candidate, ranked, so
    Ray falls through to the next when the best is at its `max_ongoing_requests` (docs/fleet.md, Routing)."""

    def initialize_state(self, policy: WorkAwarePolicy = "tokens", **_: Any) -> None:
        if policy not in WORK_AWARE_POLICIES:
            raise ValueError(f"routing: expected one of {', '.join(WORK_AWARE_POLICIES)}, got {policy!r}")
        self.policy: WorkAwarePolicy = policy
        self.ledger = WorkLedger(origin_id())
        self._turn = 0

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True  # once every rank was tried, back off
        work = work_of(pending_request)
        if work is None or not candidate_replicas:  # e.g. the `models` lookup: power-of-two-choices
            return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
        names = [replica.replica_id.unique_id for replica in candidate_replicas]
        for name, replica in zip(names, candidate_replicas, strict=True):
            self.ledger.reported(name, replica.routing_stats)
        avoid = self.ledger.previous_replica(work.key) if work.attempt > 1 else None
        prefer = self.ledger.affine_replica(work.affinity)
        loads = self.ledger.loads(names)
        order = rank_replicas(self.policy, loads, turn=self._turn, avoid=avoid, tokens=work.tokens, prefer=prefer)
        self._turn += 1
        # Book it at once: requests routed while this one awaits dispatch must already see its work.
        request_id = pending_request.metadata.internal_request_id
        self.ledger.routed(request_id, names[order[0]], work.tokens, work.key, work.affinity)
        return [[candidate_replicas[i]] for i in order]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        work = work_of(pending_request)
        if work is not None:  # the best replica may have refused; book where it really went
            request_id = pending_request.metadata.internal_request_id
            self.ledger.routed(request_id, replica_id.unique_id, work.tokens, work.key, work.affinity)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self.ledger.completed(internal_request_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.ledger.forget(replica_id.unique_id)
