"""Work-aware routing policy: send each request to the ready replica with the least outstanding work, in tokens.

Pure code, no Ray: the policy is a function of per-replica loads (`rank_replicas`, `pick_replica`), so the
simulator in bench/ runs the very same code; `WorkLedger` keeps the loads (this router's own bookings plus the
replicas' reports of other routers' work). `fleet/router.py` wraps both as a Ray Serve `RequestRouter`.
docs/fleet.md (Routing) explains the policies, the ledger and cache affinity (`affine_index`).
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from cachetools import LRUCache

from rerankd.vocabulary import CHARS_PER_TOKEN, PAIR_SPECIAL_TOKENS, WorkAwarePolicy

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


def document_affinity_key(model: str, documents: Sequence[str]) -> str:
    """What makes two requests share a late-interaction model's vector cache: their documents, whatever the query.
    A MinHash (the smallest of the documents' digests, with the model): two requests whose document sets overlap by a
    share J of their union get the same key with probability J, so overlapping candidate sets tend to one replica."""
    prefix = model.encode() + b"\0"
    return min(hashlib.blake2b(prefix + document.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
               for document in documents)  # fmt: skip


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
    policy: WorkAwarePolicy, loads: Sequence[ReplicaLoad], avoid: str | None, tokens: float
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


def _rotation(turn: int, count: int) -> list[int]:
    return [(turn + i) % count for i in range(count)]


def affine_index(
    policy: WorkAwarePolicy,
    loads: Sequence[ReplicaLoad],
    best: int,
    *,
    prefer: str | None,
    avoid: str | None = None,
    tokens: float = 0.0,
    slack: float = AFFINITY_SLACK,
) -> int | None:
    """The index of `prefer` (the replica that last served this request's query) if the request should go there
    rather than to `best`, the policy's choice; else None. Only for `tokens`, and only while it would finish there
    within its own work of its finish on `best` (the break-even of a full cache hit; `slack` widens the margin to a
    fraction of the best finish). A replica not among `loads` (not ready, gone) or the one to avoid never is.
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
    policy: WorkAwarePolicy,
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
    first = pick_replica(policy, loads, turn=turn, avoid=avoid, tokens=tokens, prefer=prefer, slack=slack)
    order = sorted(_rotation(turn, len(loads)), key=_order_key(policy, loads, avoid, tokens))
    return [first, *(i for i in order if i != first)] if loads else []


def pick_replica(
    policy: WorkAwarePolicy,
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
    best = min(_rotation(turn, len(loads)), key=_order_key(policy, loads, avoid, tokens))
    affine = affine_index(policy, loads, best, prefer=prefer, avoid=avoid, tokens=tokens, slack=slack)
    return best if affine is None else affine


@dataclass
class _Sent:
    replica: str
    tokens: int
    at: float


class WorkLedger:
    """Outstanding work per replica as one router sees it: its own bookings, from routing to completion, plus the
    other routers' work from the replicas' reports (its own share of those is ignored: its book is fresher)."""

    # A booking never released (a request cancelled between choice and dispatch) is forgotten after this long.
    STALE_SECONDS = 600.0
    EXPIRE_EVERY_SECONDS = 10.0  # how often to look for such bookings (not on every routing decision)
    RECENT_KEYS = 4096  # request keys remembered for avoiding a failed replica on retry
    # Queries remembered for cache affinity (a few MiB, measured by bench/simulate_cache_affinity.py): at
    # 1,000 requests/s the last minute or so, time for a page-through or an agent's follow-up.
    AFFINITY_QUERIES = 65_536

    def __init__(
        self,
        origin: str,
        clock: Any = time.monotonic,
        *,
        recent_keys: int = RECENT_KEYS,
        affinity_queries: int = AFFINITY_QUERIES,
    ) -> None:
        self.origin = origin
        self._clock = clock
        self._sent: dict[str, _Sent] = {}
        self._own: dict[str, tuple[float, int]] = {}  # replica -> (tokens, requests) this router sent
        self._foreign: dict[str, tuple[float, int]] = {}
        self._speed: dict[str, float] = {}
        # Least recently used first out: a query served again is remembered anew.
        self._recent: LRUCache[str, str] = LRUCache(recent_keys)
        self._affinity: LRUCache[str, str] = LRUCache(affinity_queries)
        self._expired_at = clock()

    def routed(
        self, request_id: str, replica: str, tokens: int, key: str | None = None, affinity: str | None = None
    ) -> None:
        """Book a request on `replica` (moving it if it was booked elsewhere); remember where its key (for a retry)
        and its query (`affinity`, for cache affinity) went."""
        self._release(request_id)
        self._sent[request_id] = _Sent(replica, tokens, self._clock())
        own_tokens, own_requests = self._own.get(replica, (0.0, 0))
        self._own[replica] = (own_tokens + tokens, own_requests + 1)
        if key is not None:
            self._recent[key] = replica
        if affinity is not None:
            self._affinity[affinity] = replica

    def completed(self, request_id: str) -> None:
        self._release(request_id)

    def reported(self, replica: str, stats: Mapping[str, Any] | None) -> None:
        """Take a replica's routing stats: `{"origins": {origin: [tokens, requests]}, "tokens_per_second": x}`."""
        stats = stats or {}
        speed = float(stats.get("tokens_per_second") or 0.0)
        if speed > 0:
            self._speed[replica] = speed
        foreign = [v for origin, v in (stats.get("origins") or {}).items() if origin != self.origin]
        self._foreign[replica] = (sum(float(v[0]) for v in foreign), sum(int(v[1]) for v in foreign))

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
            own_tokens, own_requests = self._own.get(replica, (0.0, 0))
            foreign_tokens, foreign_requests = self._foreign.get(replica, (0.0, 0))
            speed = self._speed.get(replica, typical)
            result.append(ReplicaLoad(replica, own_tokens + foreign_tokens, own_requests + foreign_requests, speed))
        return result

    def _release(self, request_id: str) -> None:
        sent = self._sent.pop(request_id, None)
        if sent is None:
            return
        own_tokens, own_requests = self._own[sent.replica]
        if own_requests > 1:
            self._own[sent.replica] = (own_tokens - sent.tokens, own_requests - 1)
        else:
            del self._own[sent.replica]

    def _expire(self) -> None:
        now = self._clock()
        if now - self._expired_at < self.EXPIRE_EVERY_SECONDS:
            return
        self._expired_at = now
        cutoff = now - self.STALE_SECONDS
        for request_id in [rid for rid, sent in self._sent.items() if sent.at < cutoff]:
            self._release(request_id)
