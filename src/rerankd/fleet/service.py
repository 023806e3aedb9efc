"""`FleetService`: the `RerankService` of the ingress, answered by the model replicas through a Ray Serve handle.

Reranking is idempotent, so a request whose replica dies mid-request is sent once more, to a different replica
(the router avoids the one that failed it): an accepted request is lost only if two replicas die under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import PurePath
from typing import Any

from ray.exceptions import RayActorError

from rerankd.config import Settings
from rerankd.errors import EngineFailure, NotReady
from rerankd.fleet.metrics import FleetMetrics
from rerankd.fleet.routing import Work, affinity_key, document_affinity_key, estimate_tokens, origin_id
from rerankd.pipeline.types import ModelInfo, RerankRequest, RerankResult, State, check_limits
from rerankd.vocabulary import CHARS_PER_TOKEN, PAIR_SPECIAL_TOKENS

log = logging.getLogger(__name__)

STATUS_PERIOD_SECONDS = 1.0  # how often the ingress asks Ray how many replicas run (drives /ready)
# How long a request to an ingress replica that is still loading waits for it to become ready before a 503: an
# ingress replica (one of several, or a replacement for a lost one) takes traffic from Serve before its first look
# at the fleet, while the others may already serve.
LOADING_WAIT_SECONDS = 5.0


def request_affinity(settings: Settings, request: RerankRequest, models: Sequence[ModelInfo] = ()) -> str | None:
    """The request's cache-affinity key for the router: its documents where a late-interaction model scores them
    (the model or the cascade's first stage: replicas cache document vectors), else its query where replicas cache
    scores; None with the setting off or no cache (the router then picks the least loaded replica)."""
    if not settings.cache_affinity:
        return None
    named = [request.model] + ([request.first_stage_model] if request.first_stage_model else [])
    served = (_served(models, name) for name in named)
    late = [info.id for info in served if info is not None and info.kind == "late-interaction"]
    if late and settings.vector_cache_mb:
        return document_affinity_key(late[0], request.documents)
    if not settings.score_cache_mb:
        return None
    return affinity_key(request.model or "", request.query, request.instruction)


def _served(models: Sequence[ModelInfo], name: str | None) -> ModelInfo | None:
    """The served model `name` answers to (None: the default, the first), if known."""
    if name is None:
        return models[0] if models else None
    return next((info for info in models if name in (info.id, *info.aliases) or PurePath(name).name == info.id), None)


class FleetService:
    """Ready while at least one model replica is; sends each request through the work-aware router."""

    def __init__(
        self, settings: Settings, handle: Any, metrics: FleetMetrics, *, app_name: str, deployment: str
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.origin = origin_id()
        self.state: State = "loading"
        self.replica_states: dict[str, int] = {}
        self._handle = handle
        self._app_name = app_name
        self._deployment = deployment
        self._models: list[ModelInfo] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()  # set while state is "ready"
        self._outstanding = [0, 0]  # requests, estimated tokens

    overloaded = False  # replicas turn work away themselves; the ingress queues at the router

    def health_problem(self) -> str | None:
        return None  # replicas report their own health to Ray

    def start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()

    def models(self) -> list[ModelInfo]:
        if self._models is None or self.state != "ready":
            raise NotReady(f"no model replica is ready ({self.state}); retry shortly", retry_after=2)
        return self._models

    async def rerank(self, request: RerankRequest) -> RerankResult:
        if self.state == "loading":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), LOADING_WAIT_SECONDS)
        models = self.models()
        check_limits(request, self.settings.max_documents, self.settings.max_query_chars)
        max_length = models[0].max_length
        if request.max_tokens_per_doc is not None:
            query_tokens = len(request.query) // CHARS_PER_TOKEN
            max_length = min(max_length, request.max_tokens_per_doc + query_tokens + PAIR_SPECIAL_TOKENS)
        tokens = estimate_tokens(request.query, request.documents, max_length)
        work = Work(tokens, self.origin, uuid.uuid4().hex, affinity=request_affinity(self.settings, request, models))
        self._track(+1, work.tokens)
        try:
            reply = await self._handle.rerank.remote(request, work=work)
        except RayActorError as first:
            self.metrics.retries.inc()
            log.warning("replica died under request %s (%s); retrying on another replica", work.key, first)
            try:
                reply = await self._handle.rerank.remote(request, work=replace(work, attempt=2))
            except RayActorError as second:
                self.metrics.lost.inc()
                raise EngineFailure(f"two replicas died serving this request: {second}") from second
        finally:
            self._track(-1, work.tokens)
        self.metrics.report(reply.report)
        if reply.error is not None:
            raise reply.error.to_exception()
        assert reply.result is not None
        return reply.result

    def _track(self, sign: int, tokens: int) -> None:
        self._outstanding[0] += sign
        self._outstanding[1] += sign * tokens
        self.metrics.outstanding_requests.set(self._outstanding[0])
        self.metrics.outstanding_tokens.set(self._outstanding[1])

    async def _watch(self) -> None:
        """Follow the replica count (for /ready and metrics) and learn the served models from the first replica."""
        while True:
            try:
                status, states = await asyncio.to_thread(deployment_status, self._app_name, self._deployment)
                self.replica_states = states
                self.metrics.replica_states(states)
                if states.get("RUNNING", 0) and self._models is None:
                    self._models = await asyncio.wait_for(self._handle.models.remote(), timeout=30)
                if states.get("RUNNING", 0) and self._models is not None:
                    self.state = "ready"
                else:
                    self.state = "failed" if status == "DEPLOY_FAILED" else "loading"
            except Exception as exc:  # a slow or restarting controller: keep the last known state, try again
                log.debug("fleet status unavailable: %s", exc)
            if self.state == "ready":
                self._ready.set()
            else:
                self._ready.clear()
            await asyncio.sleep(STATUS_PERIOD_SECONDS)


def deployment_status(app_name: str, deployment_name: str) -> tuple[str, dict[str, int]]:
    """A Serve deployment's status and its replicas by state ("", {} while it does not exist)."""
    from ray import serve

    application = serve.status().applications.get(app_name)
    deployment = application.deployments.get(deployment_name) if application else None
    if deployment is None:
        return "", {}
    return str(deployment.status), {str(state): count for state, count in deployment.replica_states.items()}
