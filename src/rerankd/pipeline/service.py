"""`LocalService`: the `RerankService` of one process, answering requests with the engines it loads.

It checks and admits each request, then runs its steps (`run.runner.Runner`) under the request's deadline and
describes the outcome (`run.describe`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from rerankd.config import Settings
from rerankd.engine.engine import Engine
from rerankd.engine.queue_stats import stall_problem
from rerankd.engine.registry import ModelRegistry
from rerankd.errors import DeadlineExceeded, InvalidRequest, ModelNotFound, NotReady, PayloadTooLarge, RerankdError
from rerankd.first_stage import EmbeddingCache, EmbeddingScorer
from rerankd.first_stage.corpus_stats import Bm25Statistics
from rerankd.metrics import Metrics
from rerankd.models import ModelSpec, resolve_model
from rerankd.pipeline.admission import Admission, request_stages
from rerankd.pipeline.calibration import Calibration
from rerankd.pipeline.rescore import HeadRescorer, embedding_model_settings
from rerankd.pipeline.run.describe import describe, ranked
from rerankd.pipeline.run.options import ChunkOptions, Options
from rerankd.pipeline.run.runner import Runner
from rerankd.pipeline.types import ModelInfo, RerankRequest, RerankResult, State, check_limits, request_deadline

log = logging.getLogger(__name__)


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
        self._runner = Runner(
            self._embeddings_first_stage,
            bm25_max_chars=settings.bm25_max_chars,
            statistics=Bm25Statistics.from_settings(settings, metrics),
        )
        self._calibration_files = [Calibration.load(path) for path in settings.calibration]
        self._calibrations: dict[str, Calibration] = {}  # by served model name, once loaded
        self._embedding_cache = EmbeddingCache(settings.embedding_cache_entries, metrics)
        self._embeddings: EmbeddingScorer | None = None
        self._own_engines: list[Engine] = []  # loaded for the embedding first stage, not served
        self._rescorer = HeadRescorer(settings.rescore_head_min)  # head engines under precision int8-rescore
        self.admission = Admission(settings.max_queue_seconds, fair=settings.scheduling == "fair")

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
            engines = [self._rescorer.load(spec, self.settings, self.metrics) for spec in specs]
            for engine in engines:
                engine.warmup(self.settings.warmup_seconds)
            self._rescorer.warmup(self.settings.warmup_seconds)
            if self.settings.embedding_model:
                self._embeddings = self._load_embeddings(engines)
        except Exception as exc:
            self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        self._registry = ModelRegistry(engines)
        for calibration in self._calibration_files:  # a file for a model not served must fail at start-up
            try:
                self._calibrations[self._registry.get(calibration.model).spec.name] = calibration
            except ModelNotFound as exc:
                self.state, self.error = "failed", f"calibration: a file for {calibration.model!r}: {exc}"
                raise RerankdError(self.error) from None
        if self.settings.first_stage_model:  # a typo must fail at start-up, not on the first hybrid request
            try:
                self._registry.get(self.settings.first_stage_model)
            except ModelNotFound as exc:
                self.state, self.error = "failed", f"first_stage_model: {exc}"
                raise RerankdError(self.error) from None
        if self.metrics:
            for engine in engines:
                self.metrics.watch_admission(engine.spec.name, self.admission.queued_seconds)
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
            ModelInfo(e.spec.name, e.spec.kind, e.spec.aliases, e.spec.max_length, self._rescorer.describe(e))
            for e in self.registry.engines
        ]

    async def rerank(self, request: RerankRequest) -> RerankResult:
        """Checks and admission first (cheap, no tokenizing), then the work, bounded by the request's deadline."""
        engine = self.registry.get(request.model)
        check_limits(request, self.settings.max_documents, self.settings.max_query_chars)
        options = self._options(request, engine)
        stages = request_stages(self._runner.costs, engine, request.query, request.documents, options)
        timeout, source = request_deadline(request.timeout_ms, self.settings.request_timeout_seconds)
        with self.admission.admit(*stages) as ticket:
            if len(stages) > 1:  # a cascade: its first model's queue is free once that model has answered
                options = dataclasses.replace(options, first_stage_done=functools.partial(ticket.stage_done, 0))
            try:
                async with asyncio.timeout(timeout) as deadline:
                    return await self._rerank(engine, request, options)
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise DeadlineExceeded(
                    f"request: not answered within {timeout:g} s ({source}); its queued work was dropped"
                ) from None

    async def _rerank(self, engine: Engine, request: RerankRequest, options: Options) -> RerankResult:
        started = time.perf_counter()
        query = await asyncio.to_thread(engine.query_tokens, request.query)
        _check_tokens("query", len(query), self.settings.max_query_tokens, "max_query_tokens", engine.query_limit)
        if request.instruction:
            instruction = await asyncio.to_thread(engine.query_tokens, request.instruction)
            limit, setting = self.settings.max_instruction_tokens, "max_instruction_tokens"
            _check_tokens("instruction", len(instruction), limit, setting, engine.query_limit)
        if engine.tokenizer.prompt is not None:  # before any work: the prompt must leave its document room
            await asyncio.to_thread(engine.tokenizer.prompt.check, request.query, request.instruction)
        documents = request.documents
        if request.max_tokens_per_doc is not None and request.max_tokens_per_doc < engine.spec.max_length:
            documents = await asyncio.to_thread(_clip_all, engine, documents, request.max_tokens_per_doc)
        outcome = await self._runner.run(engine, request.query, query, documents, options)
        if self.metrics:
            self.metrics.documents.labels(engine.spec.name).inc(len(documents))
            self.metrics.strategies.labels(engine.spec.name, outcome.plan.strategy).inc()
        meta = describe(options, outcome, elapsed_ms=1000 * (time.perf_counter() - started))
        return RerankResult(engine.spec.name, ranked(outcome, request.top_n), outcome.tokens, {"rerankd": meta})

    def health_problem(self) -> str | None:
        """Why this process should be restarted, or None: an engine with work waiting and no batch finished."""
        if self._registry is None:
            return None
        worst = max((engine.stats() for engine in self._registry.engines), key=lambda stats: stats.stalled_seconds)
        return stall_problem(worst.queued_pairs, worst.stalled_seconds, self.settings.replica_stall_seconds)

    @property
    def overloaded(self) -> bool:
        return self.admission.overloaded()

    def _options(self, request: RerankRequest, engine: Engine) -> Options:
        """The request's fields, else the server's settings of the same name."""
        s = self.settings
        if request.instruction is not None and not engine.takes_instruction:
            raise InvalidRequest(
                f"instruction: model {engine.spec.name} takes no instruction (only LLM rerankers whose prompt "
                "template places one do)"
            )
        first_model = request.first_stage_model or s.first_stage_model or None
        try:
            first_engine = None if first_model is None else self.registry.get(first_model)
        except ModelNotFound as exc:
            source = "first_stage_model" if request.first_stage_model else "first_stage_model (server setting)"
            raise InvalidRequest(f"{source}: {exc}") from None
        if first_engine is engine:  # by any of its names: a cascade into itself would score every document twice
            if request.first_stage_model:
                raise InvalidRequest(
                    f"first_stage_model: {request.first_stage_model!r} is {engine.spec.name}, the model this request "
                    "is scored by; a cascade's first stage must be another served model (or none: BM25)"
                )
            first_engine = None  # the server's cascade model asked directly: its own requests cut by BM25
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
            instruction=request.instruction,
            first_stage_model=first_engine,
            rescored_head=self._rescorer.head(engine, request.top_n),
            calibration=self._calibrations.get(engine.spec.name),
            min_score=request.min_score,
        )

    async def _embeddings_first_stage(self) -> EmbeddingScorer:
        if self._embeddings is None:
            raise InvalidRequest(
                "strategy: bi-encoder needs an embedding pre-filter; this server has none (embedding_model)"
            )
        return self._embeddings

    def _load_embeddings(self, served: list[Engine]) -> EmbeddingScorer:
        """The bi-encoder of the embedding first stage, at start-up: a served engine of that model (its head engine
        under int8-rescore, as `embedding_model_settings`), else its own."""
        spec = resolve_model(self.settings.embedding_model, cache_dir=self.settings.cache_dir)
        engine = next((self._rescorer.exact(e) for e in served if e.spec.name == spec.name), None)
        if engine is None:
            if spec.kind != "bi-encoder":
                raise RerankdError(f"embedding_model: {spec.name} is a {spec.kind}; it must be a bi-encoder")
            log.info("loading %s for the embedding pre-filter", spec.name)
            engine = Engine.load(spec, embedding_model_settings(self.settings), self.metrics)
            self._own_engines.append(engine)
        try:
            return EmbeddingScorer(engine, self._embedding_cache)
        except ValueError as exc:
            raise RerankdError(str(exc)) from None

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
        for engine in self._own_engines:
            engine.close()
        self._rescorer.close()
        self._runner.statistics.save()


def _check_tokens(field: str, count: int, limit: int, setting: str, window: int) -> None:
    """413 for a text over its token limit: the setting, or when it is 0 the model's `window`."""
    if count > (limit or window):
        source = setting if limit else f"{setting}: the model's window"
        raise PayloadTooLarge(f"{field}: at most {limit or window} tokens ({source}), got {count}")


def _clip_all(engine: Engine, documents: Sequence[str], max_tokens: int) -> list[str]:
    return [engine.tokenizer.clip(document, max_tokens) for document in documents]
