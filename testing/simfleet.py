"""A fleet of cost-model replicas (`costmodel.SimulatedService`) on real Ray: the production application's wiring
(`fleet.ray_app.build_app`: router, autoscaler, ingress) with `SimulatedModelReplica` as the model deployment."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from rerankd.config import Settings
from rerankd.engine.queue_stats import QueueStats
from rerankd.fleet.launch import AppBuilder, Fleet
from rerankd.fleet.model_replica import ModelReplica
from rerankd.fleet.ray_app import build_app
from rerankd.pipeline.types import RerankService
from testing.costmodel import SimulatedReplica, SimulatedService


class SimulatedModelReplica(ModelReplica):
    """A model replica whose service sleeps per token instead of running a model."""

    def __init__(self, settings: dict[str, Any], cost: SimulatedReplica) -> None:
        self.cost = cost
        super().__init__(settings)

    def start_service(self, settings: Settings) -> tuple[RerankService, Callable[[], QueueStats]]:
        service = SimulatedService(self.cost, settings.max_documents)
        service.load()
        return service, service.load_now


def simulated_app(cost: SimulatedReplica) -> AppBuilder:
    """An application builder for `Fleet(app=...)`: `build_app` with simulated model replicas."""
    return partial(build_app, replica=SimulatedModelReplica, replica_args=(cost,))


def simulated_fleet(settings: Settings, cost: SimulatedReplica, *, num_cpus: float | None = None) -> Fleet:
    """A `Fleet` of simulated replicas, each as fast as `cost` says."""
    return Fleet(settings, app=simulated_app(cost), num_cpus=num_cpus)
