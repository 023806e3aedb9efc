"""A model replica's bookkeeping, in-process and without Ray: health, routing and autoscaling stats, the cost
model, and the settings that shape replicas."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from conftest import wait_until

from rerankd.config import Settings
from rerankd.engine.queue_stats import QueueStats
from rerankd.engine.scheduler import Scheduler
from rerankd.errors import BY_TYPE, InvalidRequest, Overloaded, RerankdError
from rerankd.fleet.ray_app import check_settings, ingress_options, replica_plan
from rerankd.fleet.replica import RemoteError, ReplicaCore, health_problem
from rerankd.fleet.routing import Work
from rerankd.pipeline.types import RerankRequest
from testing.costmodel import SimulatedReplica, SimulatedService


def test_health_fails_only_while_a_real_scheduler_is_stuck_with_work_waiting() -> None:
    release = threading.Event()
    entered: list[float] = []

    def stuck_batch(items: list) -> np.ndarray:
        entered.append(time.perf_counter())
        release.wait(30)  # an engine that hangs (a wedged GPU, a deadlock) until released
        return np.zeros((len(items), 1), dtype=np.float32)

    scheduler = Scheduler(stuck_batch, max_batch_tokens=64, max_batch_size=1, max_queued_pairs=100)

    async def submit_two() -> np.ndarray:
        return await asyncio.gather(scheduler.submit([[1, 2, 3]]), scheduler.submit([[4, 5]]))

    results: list = []
    worker = threading.Thread(target=lambda: results.append(asyncio.run(submit_two())))
    worker.start()
    try:
        assert health_problem(QueueStats.merged([scheduler.stats()]), stall_seconds=0.3) is None
        wait_until(lambda: scheduler.stats().stalled_seconds > 0.45, timeout=10)  # the batch then began > 0.4 s ago
        problem = health_problem(QueueStats.merged([scheduler.stats()]), stall_seconds=0.3)
        assert problem is not None and "stuck" in problem and "replica_stall_seconds" in problem
    finally:
        released = time.perf_counter()
        release.set()
        worker.join(30)
        scheduler.close()
    assert len(results) == 1
    assert health_problem(QueueStats.merged([scheduler.stats()]), stall_seconds=0.3) is None
    # The stuck batch counts as inference time: at least from when it began until it was released. (The stall clock
    # starts earlier, when work arrives, so comparing with it raced.)
    assert QueueStats.merged([scheduler.stats()]).busy_seconds >= released - entered[0] > 0.4


def replica(cost: SimulatedReplica) -> tuple[ReplicaCore, SimulatedService]:
    service = SimulatedService(cost)
    service.load()
    return ReplicaCore("r0", service, service.load_now, stall_seconds=60), service


def test_routing_stats_break_outstanding_work_down_by_origin() -> None:
    core, _ = replica(SimulatedReplica(tokens_per_second=2000))
    request = RerankRequest("fast embedded database", ["sqlite is a small database"] * 20)

    async def scenario() -> tuple[dict, dict]:
        calls = [
            asyncio.ensure_future(core.rerank(request, Work(500, "ingress-a", "k1"))),
            asyncio.ensure_future(core.rerank(request, Work(700, "ingress-a", "k2"))),
            asyncio.ensure_future(core.rerank(request, Work(300, "ingress-b", "k3"))),
        ]
        await asyncio.sleep(0.05)
        during = core.routing_stats()
        await asyncio.gather(*calls)
        return during, core.routing_stats()

    during, after = asyncio.run(scenario())
    assert during["origins"] == {"ingress-a": [1200, 2], "ingress-b": [300, 1]}
    assert during["queued_tokens"] > 0 and during["inflight_tokens"] > 0
    assert after["origins"] == {}


def test_routing_stats_report_speed_in_estimated_tokens_per_busy_second() -> None:
    core, _ = replica(SimulatedReplica(tokens_per_second=840, overhead_seconds=0.0))
    request = RerankRequest("q words", ["one two three four five six seven"] * 30)  # 420 tokens: 0.5 s each

    async def serve(times: int) -> None:
        for n in range(times):
            await core.rerank(request, Work(1000, "ingress", f"k{n}"))

    asyncio.run(serve(1))
    assert core.routing_stats()["tokens_per_second"] == 0.0  # under a second of inference: not reported yet
    asyncio.run(serve(2))
    # 3,000 estimated tokens in 1.5 s of (cost-model) inference
    assert core.routing_stats()["tokens_per_second"] == pytest.approx(2000, rel=0.1)


def test_autoscaling_stats_report_busy_fraction_queue_and_p99() -> None:
    core, _ = replica(SimulatedReplica(tokens_per_second=5000, overhead_seconds=0.0))
    request = RerankRequest("q words", ["one two three four five six seven"] * 30)  # ~400 tokens, ~0.08 s

    async def scenario() -> dict[str, float]:
        core.autoscaling_stats()  # the first call only sets the mark
        started = time.monotonic()
        while time.monotonic() - started < 0.5:  # back to back: the replica is busy all along
            await core.rerank(request, None)
        return core.autoscaling_stats()

    stats = asyncio.run(scenario())
    assert stats["busy"] > 0.7
    assert stats["queued_tokens"] == 0
    assert 50 < stats["p99_ms"] < 1000


def test_errors_cross_the_replica_boundary_with_status_and_retry_after() -> None:
    core, _ = replica(SimulatedReplica())
    reply = asyncio.run(core.rerank(RerankRequest(" ", ["a"]), None))
    assert reply.result is None and reply.error is not None
    error = reply.error.to_exception()
    assert isinstance(error, InvalidRequest) and error.status == 400 and "query" in error.message
    overloaded = RemoteError.of(Overloaded("queue full", retry_after=3)).to_exception()
    assert isinstance(overloaded, Overloaded) and overloaded.retry_after == 3


def test_every_error_type_comes_back_with_its_class_and_status() -> None:
    def subclasses(cls: type[RerankdError]) -> list[type[RerankdError]]:
        return [cls, *(found for sub in cls.__subclasses__() for found in subclasses(sub))]

    for cls in subclasses(RerankdError):  # a subclass that keeps its parent's `type` comes back as the parent
        rebuilt = RemoteError.of(cls("m", retry_after=1.5)).to_exception()
        assert type(rebuilt) is BY_TYPE[cls.type], cls
        assert (rebuilt.type, rebuilt.status, rebuilt.retry_after) == (cls.type, cls.status, 1.5), cls


def test_cost_model_runs_requests_one_at_a_time_in_arrival_order() -> None:
    cost = SimulatedReplica(tokens_per_second=10_000, overhead_seconds=0.0)
    service = SimulatedService(cost)
    service.load()
    big = RerankRequest("q", ["w " * 50] * 40)  # 40 x (1 + 50 words) x 1.3 -> ~2,800 tokens, ~0.28 s
    small = RerankRequest("q", ["w w w"])

    async def scenario() -> list[float]:
        started = time.monotonic()

        async def timed(request: RerankRequest) -> float:
            await service.rerank(request)
            return time.monotonic() - started

        first = asyncio.ensure_future(timed(big))
        await asyncio.sleep(0.01)
        assert service.load_now().queued_tokens == 0 and service.load_now().inflight_tokens > 0
        second = asyncio.ensure_future(timed(small))
        await asyncio.sleep(0.01)
        assert service.load_now().queued_tokens > 0
        return list(await asyncio.gather(first, second))

    done_big, done_small = asyncio.run(scenario())
    assert done_small >= done_big  # the small request waited behind the big one
    assert service.load_now() == QueueStats(busy_seconds=service.load_now().busy_seconds)
    assert service.load_now().busy_seconds == pytest.approx(cost.seconds(cost.tokens("q", big.documents)) * 1, rel=0.2)


def test_replicas_get_threads_from_their_cpu_share_and_gpus_on_cuda() -> None:
    cpu = replica_plan(Settings(replica_cpus=2.5))
    assert (cpu.num_cpus, cpu.num_gpus, cpu.settings.threads, cpu.settings.device) == (2.5, 0.0, 2, "cpu")
    assert replica_plan(Settings(replica_cpus=0.5)).settings.threads == 1
    assert replica_plan(Settings(replica_cpus=4, threads=3)).settings.threads == 3
    gpu = replica_plan(Settings(), cluster_gpus=4)
    assert (gpu.num_gpus, gpu.settings.device) == (1.0, "cuda")
    assert replica_plan(Settings(device="cuda", replica_gpus=0.5)).num_gpus == 0.5
    assert replica_plan(Settings(device="cpu"), cluster_gpus=4).num_gpus == 0.0


def test_fleet_settings_are_checked_before_ray_starts() -> None:
    check_settings(Settings(replicas=2))
    check_settings(Settings(autoscale="1:4"))
    with pytest.raises(ValueError, match="not both"):
        check_settings(Settings(replicas=2, autoscale="1:4"))
    with pytest.raises(ValueError, match="min <= max"):
        check_settings(Settings(autoscale="4:1"))


def test_ingress_replicas_default_to_one_per_node_and_never_share_a_node_when_nodes_suffice() -> None:
    def shape(nodes: int, **settings: int) -> tuple[int, int | None]:
        options = ingress_options(Settings(**settings), cluster_nodes=nodes)
        return options["num_replicas"], options.get("max_replicas_per_node")

    # One per node: every node's proxy prefers the ingress replica on its own node (Serve's default).
    assert shape(3) == (3, 1)
    assert shape(5) == (5, 1)
    assert shape(2) == (2, 1)
    assert shape(1) == (2, None)  # one node: two replicas, so one crash is not an outage
    # An explicit count is kept, spread as evenly as Serve's hard per-node limit allows.
    assert shape(3, ingress_replicas=2) == (2, 1)
    assert shape(2, ingress_replicas=5) == (5, 3)
    assert shape(1, ingress_replicas=1) == (1, None)


def test_a_simulated_fleet_is_the_production_app_with_stand_in_replicas() -> None:
    from rerankd.fleet.ray_app import MODEL_DEPLOYMENT, build_app
    from testing.simfleet import SimulatedModelReplica, simulated_app

    def model_deployment(app):  # the ingress is bound to the model deployment's handle
        bound = next(arg for arg in app._bound_deployment.init_args if hasattr(arg, "_bound_deployment"))
        return bound._bound_deployment

    cost = SimulatedReplica(tokens_per_second=5)
    real = model_deployment(build_app(Settings(replicas=2)))
    simulated = model_deployment(simulated_app(cost)(Settings(replicas=2)))
    assert real.name == simulated.name == MODEL_DEPLOYMENT and real.num_replicas == simulated.num_replicas == 2
    assert simulated.func_or_class is SimulatedModelReplica and simulated.init_args[1:] == (cost,)
    assert len(real.init_args) == 1  # production replicas get their settings, nothing else
