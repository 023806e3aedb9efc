"""Work-aware routing: send each request to the ready replica with the least outstanding work.

Work is counted in estimated tokens (query + document per pair), because a reranking request's cost grows with
its documents and their lengths: one 1,000-document request costs as much as a hundred 10-document ones, so
round-robin (or counting requests) queues small requests behind big ones.

The policy is a pure function of per-replica loads (`rank_replicas`, `pick_replica`), so the discrete-event
simulator in bench/ runs the very same code. `WorkLedger` keeps those loads: the work this router sent and has
not seen finish (exact and instant), plus other routers' work as the replicas report it (`record_routing_stats`,
a second or so old). `WorkAwareRouter` wraps both as a Ray Serve `RequestRouter`.

Cache affinity: each replica's engine keeps a score cache, so a request for a query a replica has just scored
(the next page, a retry, an agent re-ranking an overlapping set) costs it little. The ledger remembers which
replica last served each query (`Work.affinity`), and `tokens` routing sends the request there instead of the
least loaded replica when it would finish there no later than the least loaded one plus the request's own
work (`affine_index`).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

Policy = Literal["tokens", "queue", "round-robin"]
POLICIES: tuple[Policy, ...] = ("tokens", "queue", "round-robin")

# Characters per token of English text under WordPiece/BPE tokenizers: good enough to weigh requests against each
# other, and free (the ingress has no tokenizer).
CHARS_PER_TOKEN = 4
PAIR_SPECIAL_TOKENS = 3  # [CLS] query [SEP] document [SEP]

# How much later than on the least loaded replica a request may finish on the replica that served its query
# before, beyond its own work (a fraction of the least loaded replica's finish time); see `affine_index`.
AFFINITY_SLACK = 0.0


def estimate_tokens(query: str, documents: Sequence[str], max_length: int | None = None) -> int:
    """Estimated model tokens of a rerank request: each (query, document) pair, cut to the model's window."""
    query_tokens = math.ceil(len(query) / CHARS_PER_TOKEN)
    total = 0
    for document in documents:
        pair = query_tokens + math.ceil(len(document) / CHARS_PER_TOKEN) + PAIR_SPECIAL_TOKENS
        total += min(pair, max_length) if max_length else pair
    return total


def affinity_key(model: str, query: str, instruction: str | None) -> str:
    """What makes two requests' pairs share a score cache, short of the documents: the model and the query as the
    model sees it. A digest, so the router's memory holds 32 characters per query whatever the query's length."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (model, query, instruction or ""):
        digest.update(part.encode())
        digest.update(b"\0")  # ("ab", "c") and ("a", "bc") differ
    return digest.hexdigest()


@dataclass(frozen=True)
class Work:
    """What a router needs to know about one request; travels with the call as the `work` keyword.

    `key` stays the same across the ingress's retry, so the retry can avoid the replica that failed it.
    `affinity` (an `affinity_key`, or None for no cache affinity) names the query, so a later request for the
    same query can go where its pairs are cached.
    """

    tokens: int
    origin: str  # the router (ingress process) that sent it; see `origin_id`
    key: str
    attempt: int = 1
    affinity: str | None = None


def origin_id() -> str:
    """This process, as replicas name the routers that sent them work (the ingress and its router share it)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ReplicaLoad(NamedTuple):  # a tuple: the simulator builds millions of these
    """Outstanding work on one replica: sent and not yet answered; `speed` is its measured (estimated) tokens per
    second of inference, relative to the others, so `tokens / speed` is the time it needs to drain."""

    replica: str
    tokens: float
    requests: int
    speed: float = 1.0


def _order_key(
    policy: Policy, loads: Sequence[ReplicaLoad], avoid: str | None, tokens: float
) -> Callable[[int], tuple]:
    """Sort key over indices into `loads`: a replica to avoid goes last (unless it is the only one); then the policy's
    measure, ties going to the replica with fewer requests (or fewer tokens) so an idle fleet spreads. For `tokens`
    the measure is when the new request (`tokens`) would be done: a fast idle replica beats a slow idle one."""
    shunned = avoid if avoid is not None and len(loads) > 1 else None

    def key(i: int) -> tuple:
        load = loads[i]
        avoided = load.replica == shunned
        if policy == "tokens":
            return (avoided, (load.tokens + tokens) / load.speed, load.requests)
        if policy == "queue":
            return (avoided, load.requests, load.tokens)
        return (avoided,)  # round-robin: the rotation alone decides

    return key


def affine_index(
    policy: Policy,
    loads: Sequence[ReplicaLoad],
    best: int,
    *,
    prefer: str | None,
    avoid: str | None = None,
    tokens: float = 0.0,
    slack: float = AFFINITY_SLACK,
) -> int | None:
    """The index of `prefer` (the replica that last served this request's query) if the request should go there
    rather than to `best`, the policy's choice; else None.

    Only for `tokens`. On a full cache hit the request costs the preferred replica next to nothing, so it is done
    there at `finish - tokens / speed`: sending it there is no worse for the request while that is no later than
    its finish on `best`, i.e. while the preferred replica's finish is within the request's own work of the best
    one's. (`slack` widens the margin to a fraction of the best finish.) On a partial hit it waits at most that
    much longer, and the fleet spends less either way. A replica not among `loads` (not ready, gone) or the one
    to avoid is never preferred.
    """
    if policy != "tokens" or prefer is None or prefer == avoid:
        return None
    index = next((i for i, load in enumerate(loads) if load.replica == prefer), None)
    if index is None or index == best:
        return None
    chosen, load = loads[best], loads[index]
    best_finish = (chosen.tokens + tokens) / chosen.speed
    finish = (load.tokens + tokens) / load.speed
    return index if finish <= best_finish + max(tokens / load.speed, slack * best_finish) else None


def rank_replicas(
    policy: Policy,
    loads: Sequence[ReplicaLoad],
    *,
    turn: int = 0,
    avoid: str | None = None,
    tokens: float = 0.0,
    prefer: str | None = None,
    slack: float = AFFINITY_SLACK,
) -> list[int]:
    """Indices into `loads`, best first, for a request of `tokens`. `turn` rotates round-robin and breaks exact
    ties; `avoid` (a replica that just failed this request) goes last unless it is the only one; `prefer` (the
    replica that last served the query) comes first when `affine_index` says so."""
    rotation = [(turn + i) % len(loads) for i in range(len(loads))]
    order = sorted(rotation, key=_order_key(policy, loads, avoid, tokens))
    if order:
        affine = affine_index(policy, loads, order[0], prefer=prefer, avoid=avoid, tokens=tokens, slack=slack)
        if affine is not None:
            order.remove(affine)
            order.insert(0, affine)
    return order


def pick_replica(
    policy: Policy,
    loads: Sequence[ReplicaLoad],
    *,
    turn: int = 0,
    avoid: str | None = None,
    tokens: float = 0.0,
    prefer: str | None = None,
    slack: float = AFFINITY_SLACK,
) -> int:
    """The head of `rank_replicas` without sorting them all (the simulator calls this per request); -1 if none."""
    if not loads:
        return -1
    rotation = [(turn + i) % len(loads) for i in range(len(loads))]
    best = min(rotation, key=_order_key(policy, loads, avoid, tokens))
    affine = affine_index(policy, loads, best, prefer=prefer, avoid=avoid, tokens=tokens, slack=slack)
    return best if affine is None else affine


@dataclass
class _Sent:
    replica: str
    tokens: int
    at: float


class WorkLedger:
    """Outstanding work per replica as one router sees it.

    Own work is booked when a request is routed and released when it completes. Other routers' work comes from
    the replicas' reports, which break outstanding work down by origin; this router's own share of a report is
    ignored, since its own book is fresher.
    """

    # A booking never released (a request cancelled between choice and dispatch) is forgotten after this long.
    STALE_SECONDS = 600.0
    EXPIRE_EVERY_SECONDS = 10.0  # how often to look for such bookings (not on every routing decision)
    RECENT_KEYS = 4096  # request keys remembered for avoiding a failed replica on retry
    # Queries remembered for cache affinity (4.8 MiB in all, measured by bench/simulate_cache_affinity.py): at
    # 1,000 requests/s the last minute or so, time for a page-through or an agent's follow-up.
    AFFINITY_QUERIES = 65_536

    def __init__(self, origin: str, clock: Any = time.monotonic) -> None:
        self.origin = origin
        self._clock = clock
        self._sent: dict[str, _Sent] = {}
        self._own_tokens: dict[str, float] = {}
        self._own_requests: dict[str, int] = {}
        self._foreign: dict[str, tuple[float, int]] = {}
        self._speed: dict[str, float] = {}
        self._recent: OrderedDict[str, str] = OrderedDict()
        self._affinity: OrderedDict[str, str] = OrderedDict()
        self._expired_at = clock()

    def routed(
        self, request_id: str, replica: str, tokens: int, key: str | None = None, affinity: str | None = None
    ) -> None:
        """Book a request on `replica` (moving it if it was booked elsewhere); remember where its key (for a retry)
        and its query (`affinity`, for cache affinity) went."""
        self._release(request_id)
        self._sent[request_id] = _Sent(replica, tokens, self._clock())
        self._own_tokens[replica] = self._own_tokens.get(replica, 0) + tokens
        self._own_requests[replica] = self._own_requests.get(replica, 0) + 1
        if key is not None:
            _remember(self._recent, key, replica, self.RECENT_KEYS)
        if affinity is not None:
            _remember(self._affinity, affinity, replica, self.AFFINITY_QUERIES)

    def completed(self, request_id: str) -> None:
        self._release(request_id)

    def reported(self, replica: str, stats: Mapping[str, Any] | None) -> None:
        """Take a replica's routing stats: `{"origins": {origin: [tokens, requests]}, "tokens_per_second": x}`."""
        speed = float((stats or {}).get("tokens_per_second") or 0.0)
        if speed > 0:
            self._speed[replica] = speed
        origins = (stats or {}).get("origins") or {}
        tokens = sum(float(v[0]) for origin, v in origins.items() if origin != self.origin)
        requests = sum(int(v[1]) for origin, v in origins.items() if origin != self.origin)
        self._foreign[replica] = (tokens, requests)

    def forget(self, replica: str) -> None:
        """A replica is gone: drop its bookings."""
        for request_id in [rid for rid, sent in self._sent.items() if sent.replica == replica]:
            self._release(request_id)
        self._foreign.pop(replica, None)
        self._speed.pop(replica, None)

    def previous_replica(self, key: str) -> str | None:
        """Where the request with this key went last (to avoid it on retry)."""
        return self._recent.get(key)

    def affine_replica(self, affinity: str | None) -> str | None:
        """Where the last request for this query (an `affinity_key`) went, if it is remembered."""
        return self._affinity.get(affinity) if affinity is not None else None

    def loads(self, replicas: Sequence[str]) -> list[ReplicaLoad]:
        """Each replica's outstanding work and speed; a replica that has not measured its speed yet (new, or idle
        so far) counts as the median of the others, and with none measured every replica counts as 1."""
        self._expire()
        known = sorted(self._speed[r] for r in replicas if r in self._speed)
        typical = known[len(known) // 2] if known else 1.0
        result = []
        for replica in replicas:
            foreign_tokens, foreign_requests = self._foreign.get(replica, (0.0, 0))
            result.append(
                ReplicaLoad(
                    replica,
                    self._own_tokens.get(replica, 0) + foreign_tokens,
                    self._own_requests.get(replica, 0) + foreign_requests,
                    self._speed.get(replica, typical),
                )
            )
        return result

    def _release(self, request_id: str) -> None:
        sent = self._sent.pop(request_id, None)
        if sent is None:
            return
        self._own_tokens[sent.replica] -= sent.tokens
        self._own_requests[sent.replica] -= 1
        if self._own_requests[sent.replica] <= 0:
            del self._own_tokens[sent.replica], self._own_requests[sent.replica]

    def _expire(self) -> None:
        now = self._clock()
        if now - self._expired_at < self.EXPIRE_EVERY_SECONDS:
            return
        self._expired_at = now
        cutoff = now - self.STALE_SECONDS
        for request_id in [rid for rid, sent in self._sent.items() if sent.at < cutoff]:
            self._release(request_id)


def _remember(memory: OrderedDict[str, str], key: str, replica: str, bound: int) -> None:
    """Record `key -> replica` as the most recent entry, dropping the oldest beyond `bound`."""
    memory[key] = replica
    memory.move_to_end(key)
    while len(memory) > bound:
        memory.popitem(last=False)


def work_of(pending_request: PendingRequest | None) -> Work | None:
    """The request's `Work`, if it carries one. Ray ships the router class pickled by value, so the router's `Work`
    is a copy of the caller's class, not the same object: match by name, not by isinstance."""
    work = pending_request.kwargs.get("work") if pending_request is not None else None
    return work if type(work).__name__ == Work.__name__ else None


class WorkAwareRouter(RequestRouter):
    """Ray Serve request router running `rank_replicas` over a `WorkLedger`.

    It returns every candidate, ranked, so Ray falls through to the next one when the best is at its
    `max_ongoing_requests`. Calls without a `Work` estimate (the `models` lookup) use power-of-two-choices:
    two random candidates, of which Ray takes the one with the shorter queue.
    """

    def initialize_state(self, policy: Policy = "tokens", **_: Any) -> None:
        if policy not in POLICIES:
            raise ValueError(f"routing: expected one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy: Policy = policy
        self.ledger = WorkLedger(origin_id())
        self._turn = 0

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True  # once every rank was tried, back off
        work = work_of(pending_request)
        if work is None or not candidate_replicas:
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
