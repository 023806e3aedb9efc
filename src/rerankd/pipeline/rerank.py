"""What a rerank request is, what comes back, and the in-process service that answers it.

The API dialects map their JSON onto `RerankRequest` and `RerankResult`; the fleet (Ray Serve) answers the same
`RerankService` protocol from remote replicas.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from rerankd.config import Settings
from rerankd.engine import Engine, ModelRegistry
from rerankd.errors import InvalidRequest, NotReady, RerankdError
from rerankd.metrics import Metrics
from rerankd.models import ModelSpec, resolve_model
from rerankd.pipeline.fusion import FusionMethod, best_first
from rerankd.pipeline.hybrid import ChunkOptions, Options, Outcome, Reranker
from rerankd.pipeline.planner import STRATEGIES, Strategy
from rerankd.prefilter import EmbeddingCache, EmbeddingPrefilter

log = logging.getLogger(__name__)

State = Literal["loading", "ready", "failed"]


@dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: Sequence[str]
    model: str | None = None
    top_n: int | None = None
    raw_scores: bool = False
    truncate: bool = True
    max_tokens_per_doc: int | None = None
    documents_field: str = "documents"  # the dialect's name for the list, so errors name the right field
    # Strategies (docs/strategies.md); None = the server's setting of the same name.
    strategy: Strategy | None = None
    latency_budget_ms: float | None = None
    candidates: int | None = None  # documents a pre-filter passes to the model (a cap, for every strategy but direct)
    fusion: FusionMethod | None = None
    fusion_weight: float | None = None
    first_stage_scores: Sequence[float] | None = None  # the client's own retrieval score per document
    chunking: bool | None = None  # None: the `chunking` setting, or on when max_chunks_per_doc is given
    max_chunks_per_doc: int | None = None


@dataclass(frozen=True)
class Ranked:
    index: int
    score: float
    model_score: float | None = None  # the model's own score, when `score` is fused
    first_stage_score: float | None = None  # the first stage's score, when fused
    cut_by_prefilter: bool = False  # not scored by the model; listed after the scored documents


@dataclass(frozen=True)
class RerankResult:
    model: str
    results: list[Ranked]
    tokens: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    id: str
    kind: str
    aliases: tuple[str, ...]
    max_length: int
    engine: str


class RerankService(Protocol):
    """What the HTTP layer needs: answer requests, say whether it is ready, list its models."""

    @property
    def state(self) -> State: ...

    def start(self) -> None:
        """Begin loading without blocking; `state` turns `ready` when done."""

    async def rerank(self, request: RerankRequest) -> RerankResult: ...

    def models(self) -> list[ModelInfo]: ...

    def close(self) -> None: ...


MAX_CHUNKS_PER_DOC = 100  # bounds one request's work: documents x chunks pairs


def check_limits(request: RerankRequest, max_documents: int) -> None:
    """Rules every dialect shares; messages name the field and the limit."""
    name = request.documents_field
    if not request.query.strip():
        raise InvalidRequest("query: must not be empty")
    if not request.documents:
        raise InvalidRequest(f"{name}: must hold at least one document")
    if len(request.documents) > max_documents:
        raise InvalidRequest(
            f"{name}: at most {max_documents} documents per request (max_documents), got {len(request.documents)}"
        )
    if request.top_n is not None and request.top_n < 1:
        raise InvalidRequest(f"top_n: must be at least 1, got {request.top_n}")
    if request.max_tokens_per_doc is not None and request.max_tokens_per_doc < 1:
        raise InvalidRequest(f"max_tokens_per_doc: must be at least 1, got {request.max_tokens_per_doc}")
    _check_strategy_fields(request)


def _check_strategy_fields(request: RerankRequest) -> None:
    if request.strategy is not None and request.strategy not in STRATEGIES:
        raise InvalidRequest(f"strategy: must be one of {', '.join(STRATEGIES)}, got {request.strategy!r}")
    if request.fusion is not None and request.fusion not in ("none", "zscore", "rrf"):
        raise InvalidRequest(f"fusion: must be one of none, zscore, rrf, got {request.fusion!r}")
    budget = request.latency_budget_ms
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise InvalidRequest(f"latency_budget_ms: must be a number above 0, got {budget}")
    if request.candidates is not None and request.candidates < 1:
        raise InvalidRequest(f"candidates: must be at least 1, got {request.candidates}")
    weight = request.fusion_weight
    if weight is not None and not (0 <= weight <= 1):
        raise InvalidRequest(f"fusion_weight: must be between 0 and 1, got {weight}")
    chunks = request.max_chunks_per_doc
    if chunks is not None and not (1 <= chunks <= MAX_CHUNKS_PER_DOC):
        raise InvalidRequest(f"max_chunks_per_doc: must be between 1 and {MAX_CHUNKS_PER_DOC}, got {chunks}")
    scores = request.first_stage_scores
    if scores is not None:
        if len(scores) != len(request.documents):
            raise InvalidRequest(
                f"first_stage_scores: needs one score per document ({len(request.documents)}), got {len(scores)}"
            )
        bad = next((i for i, score in enumerate(scores) if not math.isfinite(score)), None)
        if bad is not None:
            raise InvalidRequest(f"first_stage_scores[{bad}]: must be a finite number, got {scores[bad]}")


def rank(scores: np.ndarray, top_n: int | None) -> list[Ranked]:
    """Best first; equal scores keep their original order."""
    return [Ranked(int(i), float(scores[i])) for i in best_first(scores)[:top_n]]


class LocalService:
    """Serves the models of this process. Loading runs in the background so the port opens at once."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        *,
        specs: list[ModelSpec] | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state: State = "loading"
        self.error: str | None = None
        self._specs = specs
        self._on_failure = on_failure
        self._registry: ModelRegistry | None = None
        self._reranker = Reranker(self._embedding_prefilter)
        self._embedding_cache = EmbeddingCache(settings.embedding_cache_entries, metrics)
        self._embeddings: EmbeddingPrefilter | None = None
        self._embeddings_lock = threading.Lock()
        self._own_engines: list[Engine] = []  # loaded for the pre-filter, not served

    def start(self) -> None:
        threading.Thread(target=self._load_or_report, name="rerankd-loader", daemon=True).start()

    def _load_or_report(self) -> None:
        try:
            self.load()
        except Exception:
            log.exception("loading failed")
            if self._on_failure is not None:
                self._on_failure()

    def load(self) -> None:
        """Resolve, load and warm every model, blocking; then the service is ready."""
        try:
            specs = self._specs or [
                resolve_model(name, kind=self.settings.model_kind, cache_dir=self.settings.cache_dir)
                for name in self.settings.model
            ]
            engines = [Engine.load(spec, self.settings, self.metrics) for spec in specs]
            for engine in engines:
                engine.warmup(self.settings.warmup_seconds)
        except Exception as exc:
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        self._registry = ModelRegistry(engines)
        self.state = "ready"
        if self.metrics:
            self.metrics.ready.set(1)

    @property
    def registry(self) -> ModelRegistry:
        if self._registry is None:
            raise NotReady(f"the model is {self.state}; retry shortly", retry_after=2)
        return self._registry

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(e.spec.name, e.spec.kind, e.spec.aliases, e.spec.max_length, e.description)
            for e in self.registry.engines
        ]

    async def rerank(self, request: RerankRequest) -> RerankResult:
        engine = self.registry.get(request.model)
        check_limits(request, self.settings.max_documents)
        started = time.perf_counter()
        documents = request.documents
        if request.max_tokens_per_doc is not None and request.max_tokens_per_doc < engine.spec.max_length:
            documents = await asyncio.to_thread(_clip_all, engine, documents, request.max_tokens_per_doc)
        options = self._options(request)
        outcome = await self._reranker.run(engine, request.query, documents, options)
        if self.metrics:
            self.metrics.documents.labels(engine.spec.name).inc(len(documents))
            self.metrics.strategies.labels(engine.spec.name, outcome.plan.strategy).inc()
        meta = _describe(options, outcome, elapsed_ms=1000 * (time.perf_counter() - started))
        return RerankResult(engine.spec.name, _ranked(outcome, request.top_n), outcome.tokens, {"rerankd": meta})

    def _options(self, request: RerankRequest) -> Options:
        """The request's fields, else the server's settings of the same name."""
        s = self.settings
        chunking = request.chunking
        if chunking is None:
            chunking = s.chunking or request.max_chunks_per_doc is not None
        first_stage = request.first_stage_scores
        return Options(
            strategy=request.strategy or s.strategy,
            budget_ms=request.latency_budget_ms or s.latency_budget_ms or None,
            candidates=request.candidates,
            default_candidates=s.candidates,
            fusion=request.fusion or s.fusion,
            fusion_weight=s.fusion_weight if request.fusion_weight is None else request.fusion_weight,
            rrf_k=s.rrf_k,
            first_stage_scores=None if first_stage is None else np.asarray(first_stage, dtype=np.float64),
            chunks=ChunkOptions(
                s.chunk_tokens, s.chunk_overlap_tokens, request.max_chunks_per_doc or s.max_chunks_per_doc
            )
            if chunking
            else None,
            raw_scores=request.raw_scores,
            truncate=request.truncate,
            documents_field=request.documents_field,
        )

    async def _embedding_prefilter(self) -> EmbeddingPrefilter:
        return self._embeddings or await asyncio.to_thread(self._load_embeddings)

    def _load_embeddings(self) -> EmbeddingPrefilter:
        """The bi-encoder of the embedding pre-filter: a served engine of that model, else one loaded now."""
        with self._embeddings_lock:
            if self._embeddings is None:
                spec = resolve_model(self.settings.embedding_model, cache_dir=self.settings.cache_dir)
                engine = next((e for e in self.registry.engines if e.spec.name == spec.name), None)
                if engine is None:
                    log.info("loading %s for the embedding pre-filter", spec.name)
                    engine = Engine.load(spec, self.settings, self.metrics)
                    self._own_engines.append(engine)
                try:
                    self._embeddings = EmbeddingPrefilter(engine, self._embedding_cache)
                except ValueError as exc:
                    raise RerankdError(str(exc)) from None
            return self._embeddings

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
        for engine in self._own_engines:
            engine.close()


def _ranked(outcome: Outcome, top_n: int | None) -> list[Ranked]:
    fused = outcome.first_stage is not None
    cut = np.isnan(outcome.model_scores)
    return [
        Ranked(
            int(i),
            float(outcome.scores[i]),
            model_score=None if not fused or cut[i] else float(outcome.model_scores[i]),
            first_stage_score=None if not fused else float(outcome.first_stage[i]),  # type: ignore[index]
            cut_by_prefilter=bool(cut[i]),
        )
        for i in outcome.order[:top_n]
    ]


def _describe(options: Options, outcome: Outcome, *, elapsed_ms: float) -> dict[str, Any]:
    """What ran, for the response's `meta.rerankd` and the `X-Rerankd-*` headers."""
    plan = outcome.plan
    return {
        "strategy": plan.strategy,
        "requested_strategy": options.strategy,
        "documents": plan.documents,
        "candidates": plan.candidates,
        "estimate_ms": plan.estimate_ms,
        "elapsed_ms": round(elapsed_ms, 1),
        "latency_budget_ms": plan.budget_ms,
        "reason": plan.reason,
        **outcome.meta,
    }


def _clip_all(engine: Engine, documents: Sequence[str], max_tokens: int) -> list[str]:
    return [engine.tokenizer.clip(document, max_tokens) for document in documents]
