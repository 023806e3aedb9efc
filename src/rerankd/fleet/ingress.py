"""The fleet's ingress deployment: the usual FastAPI app (every API dialect) with a `FleetService` behind it.

Kept apart from the model replica (`model_replica.py`) because Ray imports a deployment's module in each of its
replicas: the ingress needs the wire types and the router, never the engine stack.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from rerankd.api import create_app
from rerankd.config import Settings
from rerankd.fleet.metrics import FleetMetrics
from rerankd.fleet.service import FleetService
from rerankd.metrics import Metrics


@serve.ingress()
class Ingress:
    """The FastAPI app of `rerankd serve`, with a `FleetService` behind it instead of a local engine."""

    def __init__(self, settings: dict[str, Any], model: Any, deployment: str) -> None:
        self.settings = Settings.model_validate(settings)
        self.metrics = Metrics()
        app_name = serve.get_replica_context().app_name
        fleet_metrics = FleetMetrics(self.metrics)
        self.service = FleetService(self.settings, model, fleet_metrics, app_name=app_name, deployment=deployment)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.settings, self.service, self.metrics)
