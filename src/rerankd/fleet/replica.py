"""What one model replica does besides reranking: keep the numbers routers, the autoscaler and health checks read.

`ReplicaCore` wraps any `RerankService` (the real `LocalService`, or the cost model) and has no Ray in it, so it
runs and is tested in-process; `model_replica.ModelReplica` only forwards Ray's calls to it.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rerankd.engine.queue_stats import QueueStats, stall_problem
from rerankd.errors import BY_TYPE, RerankdError
from rerankd.fleet.routing import Work
from rerankd.pipeline.types import RerankRequest, RerankResult, RerankService

# Latencies kept for the p99 the autoscaler reads: the last LATENCY_WINDOW_SECONDS, at most LATENCY_SAMPLES.
LATENCY_WINDOW_SECONDS = 30.0
LATENCY_SAMPLES = 4096
# A replica reports its speed to routers once it has spent this much time on inference (less is too noisy).
MIN_BUSY_FOR_SPEED_SECONDS = 1.0


def health_problem(load: QueueStats, stall_seconds: float) -> str | None:
    """Why the replica should be replaced, or None (the engines' own stall rule, on the replica's worst one)."""
    return stall_problem(load.queued_pairs, load.stalled_seconds, stall_seconds)


@dataclass(frozen=True)
class RemoteError:
    """A `RerankdError` raised on the replica, carried back as data so its class, status and Retry-After survive."""

    type: str  # the error's `type` (e.g. "overloaded"), a key of `errors.BY_TYPE`
    message: str
    retry_after: float | None

    @classmethod
    def of(cls, error: RerankdError) -> RemoteError:
        return cls(error.type, error.message, error.retry_after)

    def to_exception(self) -> RerankdError:
        return BY_TYPE.get(self.type, RerankdError)(self.message, retry_after=self.retry_after)


@dataclass(frozen=True)
class ReplicaReport:
    """Sent back with every answer, for the ingress's per-replica metrics."""

    replica: str
    pid: int
    seconds: float  # time this request spent on the replica
    queued_tokens: int
    queued_pairs: int
    inflight_tokens: int


@dataclass(frozen=True)
class ReplicaReply:
    result: RerankResult | None
    error: RemoteError | None
    report: ReplicaReport


class ReplicaCore:
    """One replica's service plus its accounting: work outstanding by origin, recent latencies, busy time."""

    def __init__(
        self,
        name: str,
        service: RerankService,
        load: Callable[[], QueueStats],
        *,
        stall_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.service = service
        self._load = load
        self.stall_seconds = stall_seconds
        self._clock = clock
        self._outstanding: dict[str, list[float]] = {}  # origin -> [estimated tokens, requests]
        self._latencies: deque[tuple[float, float]] = deque(maxlen=LATENCY_SAMPLES)
        self._busy_mark: tuple[float, float] | None = None  # (clock, busy_seconds) at the last autoscaling report
        self._served_tokens = 0.0  # estimated tokens of the requests answered, for the speed routers weigh by
        self._busy_before_traffic: float | None = None  # inference time before the first request (warm-up)

    async def rerank(self, request: RerankRequest, work: Work | None) -> ReplicaReply:
        started = self._clock()
        if self._busy_before_traffic is None:
            self._busy_before_traffic = self._load().busy_seconds
        self._book(work, +1)
        result: RerankResult | None = None
        error: RemoteError | None = None
        try:
            result = await self.service.rerank(request)
        except RerankdError as exc:
            error = RemoteError.of(exc)
        finally:
            self._book(work, -1)
        seconds = self._clock() - started
        if result is not None:
            self._latencies.append((self._clock(), seconds))
            self._served_tokens += work.tokens if work is not None else 0
        load = self._load()
        report = ReplicaReport(
            self.name, os.getpid(), seconds, load.queued_tokens, load.queued_pairs, load.inflight_tokens
        )
        return ReplicaReply(result, error, report)

    def routing_stats(self) -> dict:
        """For routers (`record_routing_stats`): outstanding work per origin, the queue, and the speed: estimated
        tokens answered per second of inference over the replica's life (0 until it has a second of it)."""
        load = self._load()
        busy = load.busy_seconds - (self._busy_before_traffic or 0.0)
        speed = self._served_tokens / busy if busy >= MIN_BUSY_FOR_SPEED_SECONDS else 0.0
        return {
            "origins": {origin: [tokens, int(requests)] for origin, (tokens, requests) in self._outstanding.items()},
            "queued_tokens": load.queued_tokens,
            "inflight_tokens": load.inflight_tokens,
            "tokens_per_second": speed,
        }

    def autoscaling_stats(self) -> dict[str, float]:
        """For the autoscaler (`record_autoscaling_stats`): queued tokens, busy fraction since the last call, p99."""
        load = self._load()
        now = self._clock()
        busy = 0.0
        if self._busy_mark is not None and now > self._busy_mark[0]:
            busy = (load.busy_seconds - self._busy_mark[1]) / (now - self._busy_mark[0])
        self._busy_mark = (now, load.busy_seconds)
        return {
            "queued_tokens": float(load.queued_tokens),
            "busy": float(min(max(busy, 0.0), 1.0)),
            "p99_ms": self.p99_seconds() * 1000,
        }

    def p99_seconds(self) -> float:
        cutoff = self._clock() - LATENCY_WINDOW_SECONDS
        while self._latencies and self._latencies[0][0] < cutoff:
            self._latencies.popleft()
        if not self._latencies:
            return 0.0
        return float(np.percentile([seconds for _, seconds in self._latencies], 99))

    def check_health(self) -> None:
        """Raise when the engine is stuck, so Ray replaces this replica."""
        problem = health_problem(self._load(), self.stall_seconds)
        if problem:
            raise RuntimeError(problem)

    def _book(self, work: Work | None, sign: int) -> None:
        if work is None:
            return
        entry = self._outstanding.setdefault(work.origin, [0.0, 0])
        entry[0] += sign * work.tokens
        entry[1] += sign
        if entry[1] <= 0:
            del self._outstanding[work.origin]
