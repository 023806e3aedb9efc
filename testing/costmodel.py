"""A stand-in replica whose work is an explicit cost model: it sleeps for `overhead + tokens / tokens_per_second`.

For measuring routing and autoscaling where real models would fight over too few cores (bench/routing.py) and
for the fleet simulator. Requests run one at a time in arrival order, as a real replica does with `--scheduling
fifo` (the default, fair, lets small requests overtake large ones, which only makes routing matter less). The
"true" token count here (words x 1.3) deliberately differs from the router's estimate (characters / 4), so the
router works from an estimate as it does in production. Scores are word overlap with the query: cheap and
deterministic, not a model.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rerankd.engine.queue_stats import QueueStats
from rerankd.errors import ModelNotFound
from rerankd.pipeline.types import ModelInfo, RerankRequest, RerankResult, State, check_limits, rank

COST_MODEL_NAME = "cost-model"
TOKENS_PER_WORD = 1.3


@dataclass(frozen=True)
class SimulatedReplica:
    """How fast a simulated replica is: each request costs `overhead + tokens / tokens_per_second` seconds."""

    tokens_per_second: float = 20_000.0
    overhead_seconds: float = 0.002  # per request: tokenization, transport
    cold_start_seconds: float = 0.0  # load time before the replica turns ready
    max_length: int = 512

    def pair_tokens(self, query_words: int, document_words: int) -> int:
        return min(self.max_length, int((query_words + document_words) * TOKENS_PER_WORD) + 3)

    def tokens(self, query: str, documents: Sequence[str]) -> int:
        query_words = len(query.split())
        return sum(self.pair_tokens(query_words, len(document.split())) for document in documents)

    def seconds(self, tokens: float) -> float:
        return self.overhead_seconds + tokens / self.tokens_per_second


class SimulatedService:
    """A `RerankService` that costs time, not compute (see the module docstring)."""

    def __init__(self, cost: SimulatedReplica, max_documents: int = 10_000) -> None:
        self.cost = cost
        self.max_documents = max_documents
        self.state: State = "loading"
        self._free_at = 0.0  # when the last accepted request will be done
        self._jobs: deque[tuple[float, float, int, int]] = deque()  # (start, end, tokens, pairs), in order
        self._busy_done = 0.0

    def start(self) -> None:
        self.load()

    def load(self) -> None:
        time.sleep(self.cost.cold_start_seconds)
        self.state = "ready"

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(COST_MODEL_NAME, "cross-encoder", (COST_MODEL_NAME,), self.cost.max_length, "cost-model")]

    async def rerank(self, request: RerankRequest) -> RerankResult:
        if request.model not in (None, "", "default", COST_MODEL_NAME):
            raise ModelNotFound(f"model: {request.model!r} is not served here; served names: {COST_MODEL_NAME}")
        check_limits(request, self.max_documents)
        tokens = self.cost.tokens(request.query, request.documents)
        now = time.monotonic()
        start = max(now, self._free_at)
        self._free_at = start + self.cost.seconds(tokens)
        self._jobs.append((start, self._free_at, tokens, len(request.documents)))
        await asyncio.sleep(self._free_at - now)
        words = set(request.query.lower().split())
        scores = np.array(
            [len(words & set(doc.lower().split())) / (1 + len(words)) for doc in request.documents], dtype=np.float32
        )
        return RerankResult(COST_MODEL_NAME, rank(scores, request.top_n), tokens)

    def load_now(self) -> QueueStats:
        now = time.monotonic()
        while self._jobs and self._jobs[0][1] <= now:
            start, end, _, _ = self._jobs.popleft()
            self._busy_done += end - start
        queued = [job for job in self._jobs if job[0] > now]
        running = [job for job in self._jobs if job[0] <= now]
        busy = self._busy_done + sum(now - start for start, _, _, _ in running)
        return QueueStats(
            queued_pairs=sum(job[3] for job in queued),
            queued_tokens=sum(job[2] for job in queued),
            inflight_tokens=sum(job[2] for job in running),
            busy_seconds=busy,
        )

    def close(self) -> None:
        self.state = "loading"
