"""The Ray Serve application: an ingress deployment (`ingress.py`, every API dialect) in front of a model
deployment (`model_replica.py`) whose replicas each run a whole engine; this module sizes and wires the two.

Only the driver that starts the fleet imports it; each deployment's replicas import their own module alone.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, RequestRouterConfig

from rerankd.config import Settings
from rerankd.fleet.autoscale import AutoscaleConfig, RayAutoscalePolicy
from rerankd.fleet.ingress import Ingress
from rerankd.fleet.model_replica import ModelReplica
from rerankd.fleet.router import WorkAwareRouter

APP_NAME = "rerankd"
MODEL_DEPLOYMENT = "Model"
ROUTING_STATS_SECONDS = 1.0  # how often replicas report work by origin to the routers
INGRESS_MAX_REQUESTS = 1000  # concurrent HTTP requests per ingress replica; beyond it they wait in the proxy


@dataclass(frozen=True)
class ReplicaPlan:
    """Resources one model replica asks Ray for, and the settings it runs with."""

    num_cpus: float
    num_gpus: float
    settings: Settings


def replica_plan(settings: Settings, cluster_gpus: float = 0.0) -> ReplicaPlan:
    """GPU replicas ask for `replica_gpus` (1 by default); CPU replicas run as many threads as whole CPUs they hold
    (at least one), unless `threads` says otherwise, so replicas on one machine do not oversubscribe it."""
    threads = settings.threads or max(1, math.floor(settings.replica_cpus))
    on_gpu = settings.device == "cuda" or (settings.device == "auto" and cluster_gpus > 0)
    gpus = (settings.replica_gpus or 1.0) if on_gpu else 0.0
    update = {"device": "cuda" if on_gpu else "cpu", "threads": threads}
    return ReplicaPlan(settings.replica_cpus, gpus, settings.model_copy(update=update))


def _router_config(settings: Settings) -> RequestRouterConfig:
    if settings.routing == "power-of-two":  # Ray's own router, for comparison
        return RequestRouterConfig(request_routing_stats_period_s=ROUTING_STATS_SECONDS)
    return RequestRouterConfig(
        request_router_class=WorkAwareRouter,
        request_router_kwargs={"policy": settings.routing},
        request_routing_stats_period_s=ROUTING_STATS_SECONDS,
    )


def _autoscaling_config(settings: Settings) -> AutoscalingConfig:
    config = AutoscaleConfig.from_settings(settings)
    # Replicas push their stats every fifth of the window, so a burst shows within the upscale delay.
    window = max(2.0, min(30.0, config.upscale_seconds))
    with warnings.catch_warnings():  # metrics_interval_s is deprecated in favour of env vars, but still honoured
        warnings.simplefilter("ignore", DeprecationWarning)
        return AutoscalingConfig(
            min_replicas=config.min_replicas,
            max_replicas=config.max_replicas,
            initial_replicas=config.min_replicas,
            upscale_delay_s=0,  # the policy keeps its own delays (see autoscale.py)
            downscale_delay_s=0,
            metrics_interval_s=window / 5,
            look_back_period_s=window,
            policy=AutoscalingPolicy(policy_function=RayAutoscalePolicy, policy_kwargs=asdict(config)),
        )


def check_settings(settings: Settings) -> None:
    """Fail before Ray starts on settings that cannot make a fleet."""
    if settings.replicas and settings.autoscale:
        raise ValueError("replicas and autoscale: give one of them, not both")
    if settings.autoscale:
        AutoscaleConfig.from_settings(settings)


def build_app(
    settings: Settings,
    *,
    cluster_gpus: float = 0.0,
    replica: type[ModelReplica] = ModelReplica,
    replica_args: tuple[Any, ...] = (),
) -> Application:
    """The Serve application for `settings`: fixed `replicas` or `autoscale` min:max model replicas, each a
    `replica(settings, *replica_args)` (another class only in simulations: `testing/simfleet.py`), behind
    `ingress_replicas` ingress replicas spread over the connected cluster's nodes."""
    check_settings(settings)
    plan = replica_plan(settings, cluster_gpus)
    options: dict[str, Any] = {
        "name": MODEL_DEPLOYMENT,
        "ray_actor_options": {"num_cpus": plan.num_cpus, "num_gpus": plan.num_gpus},
        "max_ongoing_requests": settings.replica_max_requests,
        # Ray replaces a replica after 3 failed checks in a row: look often enough that a stall is caught soon after
        # `replica_stall_seconds`, rarely enough to cost nothing.
        "health_check_period_s": max(1.0, min(10.0, settings.replica_stall_seconds / 4)),
        "request_router_config": _router_config(settings),
    }
    if settings.autoscale:
        options["autoscaling_config"] = _autoscaling_config(settings)
    else:
        options["num_replicas"] = max(1, settings.replicas)
    model = serve.deployment(replica).options(**options).bind(plan.settings.model_dump(mode="json"), *replica_args)
    ingress = serve.deployment(Ingress).options(**ingress_options(settings))
    return ingress.bind(settings.model_dump(mode="json"), model, MODEL_DEPLOYMENT)


def alive_nodes() -> int:
    """Nodes of the Ray cluster this process is connected to (1 when it is not connected)."""
    import ray

    if not ray.is_initialized():
        return 1
    return max(1, sum(1 for node in ray.nodes() if node.get("Alive")))


def ingress_options(settings: Settings, cluster_nodes: int | None = None) -> dict[str, Any]:
    """`ingress_replicas` ingress replicas (0: one per node, at least 2), spread over the cluster's nodes: at most
    ceil(replicas / nodes) on one node (Serve's `max_replicas_per_node`, a hard limit). One per node, so that a
    node's loss fails only requests that entered through its own proxy: docs/fleet.md (From one machine to many).
    `cluster_nodes` is counted at deploy time (`alive_nodes()` by default); redeploy to include nodes that join."""
    nodes = alive_nodes() if cluster_nodes is None else max(1, cluster_nodes)
    replicas = settings.ingress_replicas or max(2, nodes)
    options: dict[str, Any] = {
        "name": "Ingress",
        "num_replicas": replicas,
        "ray_actor_options": {"num_cpus": 0},
        "max_ongoing_requests": INGRESS_MAX_REQUESTS,
    }
    if replicas > 1 and nodes > 1:
        options["max_replicas_per_node"] = math.ceil(replicas / nodes)
    return options
