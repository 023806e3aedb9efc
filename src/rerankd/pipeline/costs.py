"""What a request will cost on an engine, learned from what earlier requests cost.

The planner needs pairs per second at this request's document lengths. Start from the engine's warm-up
calibration (tokens per second), estimate the request's tokens from its characters, and correct both with what
was measured on real requests: characters per token from tokenized candidates, and the ratio of measured to
estimated model time. So the estimate follows the machine's current load and the data's real lengths.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rerankd.engine.engine import Engine, Prepared
from rerankd.engine.tokenize import Tokens
from rerankd.pipeline.chunking import ChunkRule
from rerankd.pipeline.planner import Costs
from rerankd.vocabulary import CHARS_PER_TOKEN

_SMOOTHING = 0.3  # weight of the newest measurement in the moving averages
_INITIAL_BM25_SECONDS_PER_DOC = 60e-6  # bm25s indexing + scoring, measured on ~400-character documents
_FALLBACK_TOKENS_PER_SECOND = 1000.0  # an engine that was never warmed up


@dataclass(frozen=True)
class RescoredHead:
    """int8-rescore's head (pipeline/rescore.py, pipeline/run/head.py): the engine that scores a request's top
    `size` documents again, at `precision`. The planner, admission and the runner all ask this one object."""

    engine: Engine
    size: int
    precision: str = "fp32"


@dataclass
class _EngineStats:
    chars_per_token: float = CHARS_PER_TOKEN  # until this engine has measured its own
    correction: float = 1.0  # measured / estimated model time


def _blend(old: float, new: float) -> float:
    return (1 - _SMOOTHING) * old + _SMOOTHING * new


class CostModel:
    """Per-engine moving averages; thread-safe and cheap (numpy over character counts)."""

    def __init__(self) -> None:
        self._engines: dict[str, _EngineStats] = {}
        self._bm25_seconds_per_doc = _INITIAL_BM25_SECONDS_PER_DOC
        self._lock = threading.Lock()

    def _stats(self, engine: Engine) -> _EngineStats:
        with self._lock:
            return self._engines.setdefault(engine.spec.name, _EngineStats())

    def bm25_ms(self, documents: int) -> float:
        return 1000.0 * documents * self._bm25_seconds_per_doc

    def costs(
        self,
        engine: Engine,
        query_tokens: int,
        documents: Sequence[str],
        *,
        chunks: ChunkRule | None,
        bm25: bool,
        head: RescoredHead | None = None,
    ) -> tuple[Costs, float]:
        """The request's `Costs` (with `head`, the head engine's part too), and the part of them that is queue wait
        (for `learn_model`)."""
        stats = self._stats(engine)
        pair = engine.spec.pairs
        window = engine.tokenizer.max_length
        fixed = engine.tokenizer.special_tokens(pair=pair) + (query_tokens if pair else 0)
        doc_tokens = np.fromiter((len(d) for d in documents), dtype=np.float64, count=len(documents))
        doc_tokens /= stats.chars_per_token
        if chunks is None:
            pieces = np.ones_like(doc_tokens)
        else:
            extra = np.ceil(np.maximum(doc_tokens - chunks.size, 0) / chunks.stride)
            pieces = np.minimum(1 + extra, chunks.max_chunks)
            doc_tokens = np.minimum(doc_tokens, chunks.size)
        per_pair = float(np.mean(np.minimum(doc_tokens + fixed, window)))
        queue = engine.stats()
        speed = queue.tokens_per_second or (engine.calibration.tokens_per_second if engine.calibration else 0.0)
        speed = speed or _FALLBACK_TOKENS_PER_SECOND
        # The whole queue ahead: exact under fifo scheduling, an upper bound under fair (a budget is kept, if tight).
        wait_ms = 1000.0 * (queue.queued_tokens + queue.inflight_tokens) / speed
        fixed_ms = wait_ms + (self.bm25_ms(len(documents)) if bm25 else 0.0)
        pairs_per_second = speed / per_pair / stats.correction
        costs = Costs(pairs_per_second, float(np.mean(pieces)), fixed_ms)
        if head is None:
            return costs, wait_ms
        exact, exact_wait_ms = self.costs(head.engine, query_tokens, documents, chunks=chunks, bm25=False)
        # The head engine's queue is waited for too: the head follows the model's pass, or is all the work.
        fixed_ms += exact_wait_ms
        costs = dataclasses.replace(
            costs, fixed_ms=fixed_ms, rescored_head=head.size, rescored_pairs_per_second=exact.pairs_per_second
        )
        return costs, wait_ms + exact_wait_ms

    def work_seconds(
        self,
        engine: Engine,
        query: str,
        documents: Sequence[str],
        *,
        chunks: ChunkRule | None,
        scored: int,
        head: RescoredHead | None = None,
    ) -> float:
        """Model time of a request not yet tokenized (its query's tokens guessed from characters), for admission:
        `scored` of its documents reach the model (with `head`, the head engine's time too)."""
        query_tokens = round(len(query) / self._stats(engine).chars_per_token)
        costs, _ = self.costs(engine, query_tokens, documents, chunks=chunks, bm25=False, head=head)
        return costs.model_ms(min(scored, len(documents))) / 1000.0

    def learn_tokens(self, engine: Engine, texts: Sequence[str], tokens: Sequence[int]) -> None:
        """Characters per token from texts the model tokenized (those it did not truncate)."""
        chars, count = sum(len(t) for t in texts), sum(tokens)
        if count > 0 and chars > 0:
            stats = self._stats(engine)
            stats.chars_per_token = _blend(stats.chars_per_token, chars / count)

    def learn_prepared(self, engine: Engine, query: Tokens, texts: Sequence[str], prepared: Prepared) -> None:
        """Characters per token from a scored batch: `texts` as `engine` prepared them beside `query`, less the
        ones it cut (their length says nothing about their tokens)."""
        pair = engine.spec.pairs
        items = prepared.inputs if pair else prepared.inputs[1:]
        overhead = engine.tokenizer.special_tokens(pair=pair) + (len(query) if pair else 0)
        kept = [i for i, cut in enumerate(prepared.truncated) if not cut]
        self.learn_tokens(engine, [texts[i] for i in kept], [len(items[i]) - overhead for i in kept])

    def learn_model(self, engine: Engine, estimated_ms: float, measured_ms: float) -> None:
        """How far the model-time estimate was off, from a request that had no queue ahead of it."""
        if estimated_ms > 1 and measured_ms > 0:
            stats = self._stats(engine)
            ratio = min(max(measured_ms / estimated_ms * stats.correction, 0.25), 4.0)
            stats.correction = _blend(stats.correction, ratio)

    def learn_bm25(self, documents: int, seconds: float) -> None:
        if documents > 0 and math.isfinite(seconds):
            self._bm25_seconds_per_doc = _blend(self._bm25_seconds_per_doc, seconds / documents)
