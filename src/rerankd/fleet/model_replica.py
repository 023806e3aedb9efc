"""The fleet's model deployment: each replica runs a whole engine (`LocalService`).

A model replica loads and warms its model in its constructor, so Ray routes nothing to it before it is ready; it
reports its queue to the routers (`record_routing_stats`) and to the autoscaler (`record_autoscaling_stats`), and
fails its health check when its engine is stuck, so Ray replaces it. The accounting itself is `ReplicaCore`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from ray import serve

from rerankd.config import Settings
from rerankd.engine.queue_stats import QueueStats
from rerankd.fleet.replica import ReplicaCore, ReplicaReply
from rerankd.fleet.routing import Work
from rerankd.metrics import Metrics
from rerankd.pipeline.service import LocalService
from rerankd.pipeline.types import ModelInfo, RerankRequest, RerankService


class ModelReplica:
    """One engine per replica; see the module docstring. Subclasses may run another service (`start_service`)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        parsed = Settings.model_validate(settings)
        name = serve.get_replica_context().replica_id.unique_id
        service, load = self.start_service(parsed)
        self.core = ReplicaCore(name, service, load, stall_seconds=parsed.replica_stall_seconds)

    def start_service(self, settings: Settings) -> tuple[RerankService, Callable[[], QueueStats]]:
        """The loaded service and its queue stats."""
        local = LocalService(settings, Metrics())
        local.load()  # blocking: Ray marks the replica ready only when this returns
        return local, partial(local_load, local)

    async def rerank(self, request: RerankRequest, work: Work | None = None) -> ReplicaReply:
        return await self.core.rerank(request, work)

    def models(self) -> list[ModelInfo]:
        return self.core.service.models()

    def check_health(self) -> None:
        self.core.check_health()

    def record_routing_stats(self) -> dict[str, Any]:
        return self.core.routing_stats()

    def record_autoscaling_stats(self) -> dict[str, float]:
        return self.core.autoscaling_stats()

    def __del__(self) -> None:
        core = getattr(self, "core", None)  # absent when loading failed
        if core is not None:
            core.service.close()


def local_load(service: LocalService) -> QueueStats:
    """The queue stats of the service's engines, summed; nothing before it is ready."""
    if service.state != "ready":
        return QueueStats()
    return QueueStats.merged([engine.stats() for engine in service.registry.engines])
