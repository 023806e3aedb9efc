"""What a rerank request is, what comes back, and the in-process service that answers it.

The API dialects map their JSON onto `RerankRequest` and `RerankResult`; the fleet (Ray Serve) answers the same
`RerankService` protocol from remote replicas.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from rerankd.config import Settings
from rerankd.engine import Engine, ModelRegistry
from rerankd.errors import InvalidRequest, NotReady, PayloadTooLarge
from rerankd.metrics import Metrics
from rerankd.models import ModelSpec, resolve_model

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


@dataclass(frozen=True)
class Ranked:
    index: int
    score: float


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


def rank(scores: np.ndarray, top_n: int | None) -> list[Ranked]:
    """Best first; equal scores keep their original order."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return [Ranked(int(i), float(scores[i])) for i in order[:top_n]]


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
        documents = request.documents
        if request.max_tokens_per_doc is not None and request.max_tokens_per_doc < engine.spec.max_length:
            documents = await asyncio.to_thread(_clip_all, engine, documents, request.max_tokens_per_doc)
        prepared = await engine.prepare(request.query, documents)
        if not request.truncate and any(prepared.truncated):
            first = prepared.truncated.index(True)
            raise PayloadTooLarge(
                f"{request.documents_field}[{first}]: longer than the model's limit of {engine.spec.max_length} "
                "tokens (with the query) and truncation is off; set truncate to true to cut it"
            )
        scores = await engine.score(prepared, raw=request.raw_scores)
        if self.metrics:
            self.metrics.documents.labels(engine.spec.name).inc(len(documents))
        return RerankResult(engine.spec.name, rank(scores, request.top_n), prepared.tokens)

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()


def _clip_all(engine: Engine, documents: Sequence[str], max_tokens: int) -> list[str]:
    return [engine.tokenizer.clip(document, max_tokens) for document in documents]
