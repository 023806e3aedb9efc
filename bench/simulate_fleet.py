"""Discrete-event simulation of a large fleet, with the product's own routing and autoscaling code.

This machine cannot host 10-100 replicas at 1,000+ requests/s, so this script simulates them: every routing
decision is `rerankd.fleet.routing.pick_replica` over a `WorkLedger`, every second the autoscaler is
`rerankd.fleet.autoscale.decide`, replica speed is `testing.costmodel.SimulatedReplica` (one request at a
time per replica, in arrival order), and replicas take 30-60 s to start. Request sizes are heavy-tailed (5-1,000
documents of 20-300 tokens); the router only sees an estimate of each request's tokens (+-20% noise), as in production.

Scenarios share one arrival trace: 1,000 requests/s, a ramp to 2,000/s held for four minutes, back to 1,000/s.

    python bench/simulate_fleet.py                 # ~1.4M requests per scenario, a few minutes
    python bench/simulate_fleet.py --scale 0.2     # quick look at a fifth of the traffic
    python bench/simulate_fleet.py --speeds 1 0.5  # mixed-speed replicas: speed-weighted vs unweighted routing
"""

from __future__ import annotations

import argparse
import heapq
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from common import format_table, percentile, plot_path, save
from fleet_workload import pareto_counts

from rerankd.config import Settings
from rerankd.fleet.autoscale import AutoscaleConfig, PolicyState, Signals, decide
from rerankd.fleet.replica import MIN_BUSY_FOR_SPEED_SECONDS
from rerankd.fleet.routing import WorkLedger, pick_replica
from rerankd.vocabulary import WorkAwarePolicy
from testing.costmodel import SimulatedReplica

TICK = 1.0  # the autoscaler runs once a simulated second, as Ray's control loop would (it runs every 0.1 s)
ESTIMATE_NOISE = 0.2  # sigma of the lognormal error of the router's token estimate


@dataclass
class Replica:
    name: str
    ready_at: float
    free_at: float = 0.0  # when its last accepted request finishes
    draining: bool = False  # removed by the autoscaler: takes no new work, leaves when idle
    accepted: float = 0.0  # service seconds of all requests it has taken
    busy_marks: deque[float] = field(default_factory=lambda: deque(maxlen=64))  # busy fraction per tick
    latencies: deque[tuple[float, float]] = field(default_factory=deque)  # (finished at, seconds), last window
    queued_pairs: int = 0
    last_busy: float = 0.0
    speed: float = 1.0  # relative to the cost model's tokens_per_second
    served_estimate: float = 0.0  # the router's estimate of the tokens it answered, for its reported speed


@dataclass(frozen=True)
class Scenario:
    name: str
    policy: WorkAwarePolicy
    autoscale: bool
    weighted: bool = True  # replicas report their measured speed to the router, as `ReplicaCore` does
    replicas: int | None = None  # a fixed fleet's size; None: the base load's (`args.initial`)


@dataclass
class Trace:
    arrivals: np.ndarray  # seconds
    pairs: np.ndarray  # documents per request
    tokens: np.ndarray  # true tokens per request
    estimates: np.ndarray  # the router's estimate


def make_trace(args: argparse.Namespace, cost: SimulatedReplica, rng: np.random.Generator) -> Trace:
    # Piecewise rate: base, a one-minute ramp to peak at t=120 s, peak for 240 s, base again.
    base, peak = args.rate * args.scale, args.peak * args.scale
    edges = [(0, 120, base, base), (120, 180, base, peak), (180, 420, peak, peak), (420, args.duration, base, base)]
    arrivals = []
    for start, end, r0, r1 in edges:
        if start >= args.duration:  # a short run ends part-way through the pattern
            break
        if end > args.duration:  # cut the segment, and a ramp at the rate it has reached by then
            r1 = r0 + (r1 - r0) * (args.duration - start) / (end - start)
            end = args.duration
        mean_rate = (r0 + r1) / 2
        count = rng.poisson(mean_rate * (end - start))
        if r0 == r1:
            times = rng.uniform(start, end, count)
        else:  # linear ramp: invert the cumulative rate
            u = rng.uniform(0, 1, count)
            a, b = (r1 - r0) / (end - start) / 2, r0
            x = (-b + np.sqrt(b * b + 4 * a * u * mean_rate * (end - start))) / (2 * a)
            times = start + x
        arrivals.append(times)
    arrival = np.sort(np.concatenate(arrivals))
    pairs = pareto_counts(rng, len(arrival))
    # Each document 20-300 tokens beside a ~10-token query, cut to the model window; sum per request.
    tokens = np.array(
        [sum(cost.pair_tokens(8, int(w)) for w in rng.integers(15, 230, size=n)) for n in pairs], dtype=np.int64
    )
    estimates = np.maximum(1, tokens * rng.lognormal(0.0, ESTIMATE_NOISE, len(tokens))).astype(np.int64)
    return Trace(arrival, pairs, tokens, estimates)


class Simulation:
    def __init__(self, scenario: Scenario, trace: Trace, cost: SimulatedReplica, config: AutoscaleConfig, args) -> None:
        self.scenario = scenario
        self.trace = trace
        self.cost = cost
        self.config = config
        self.max_queued_pairs = args.max_queued_pairs
        self.window = max(2.0, min(30.0, config.upscale_seconds))  # as ray_app averages replica metrics
        self.rng = np.random.default_rng(args.seed + 1)
        self.now = 0.0
        self.ledger = WorkLedger("sim", clock=lambda: self.now)
        self.state = PolicyState()
        self.replicas: dict[str, Replica] = {}
        self.serial = 0
        self.turn = 0
        self.latency: list[float] = []
        self.rejected = 0
        self.events: list[tuple[float, int, int, str]] = []  # (time, from, to, reason)
        self.timeline: list[tuple[float, int, int, float]] = []  # (time, target, running, p99 of the last tick)
        self._tick_latencies: list[float] = []
        self.cold_start = (args.cold_start_min, args.cold_start_max)
        self.speeds = args.speeds
        for _ in range(scenario.replicas or args.initial):
            self._add(ready_at=0.0)

    def _add(self, ready_at: float) -> None:
        self.serial += 1
        name = f"r{self.serial}"
        speed = self.speeds[(self.serial - 1) % len(self.speeds)]
        self.replicas[name] = Replica(name, ready_at, speed=speed)

    def _routable(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.ready_at <= self.now and not r.draining]

    def run(self) -> dict[str, Any]:
        completions: list[tuple[float, int, str, float, int]] = []  # (done at, request, replica, latency, pairs)
        next_tick = TICK
        trace = self.trace
        started = time.perf_counter()
        for i in range(len(trace.arrivals)):
            arrival = float(trace.arrivals[i])
            while True:  # everything due before this arrival: completions and autoscaler ticks, in time order
                due_completion = completions[0][0] if completions else math.inf
                if min(due_completion, next_tick) > arrival:
                    break
                if due_completion <= next_tick:
                    self.now, request, name, latency, pairs = heapq.heappop(completions)
                    self._complete(request, name, latency, pairs)
                else:
                    self.now = next_tick
                    self._tick()
                    next_tick += TICK
            self.now = arrival
            self._route(i, completions)
        return self._summary(time.perf_counter() - started)

    def _route(self, i: int, completions: list) -> None:
        routable = self._routable()
        if not routable:
            self.rejected += 1
            return
        index = self._choose(i, [r.name for r in routable])
        self.turn += 1
        replica = routable[index]
        pairs = int(self.trace.pairs[i])
        if replica.queued_pairs + pairs > self.max_queued_pairs:  # the replica's queue is full: 429
            self.rejected += 1
            return
        service = self._service_seconds(i, replica)
        start = max(self.now, replica.free_at)
        replica.free_at = start + service
        replica.accepted += service
        replica.queued_pairs += pairs
        self._book(i, replica)
        heapq.heappush(completions, (replica.free_at, i, replica.name, replica.free_at - self.now, pairs))

    # The three steps of routing one request, which a variant of the simulation may extend (see
    # simulate_cache_affinity.py): choose among the routable replicas, cost the request there, book it.
    def _choose(self, i: int, names: list[str]) -> int:
        estimate = float(self.trace.estimates[i])
        return pick_replica(self.scenario.policy, self.ledger.loads(names), turn=self.turn, tokens=estimate)

    def _service_seconds(self, i: int, replica: Replica) -> float:
        return self.cost.seconds(float(self.trace.tokens[i])) / replica.speed

    def _book(self, i: int, replica: Replica) -> None:
        self.ledger.routed(str(i), replica.name, int(self.trace.estimates[i]))

    def _complete(self, request: int, name: str, latency: float, pairs: int) -> None:
        self.ledger.completed(str(request))
        replica = self.replicas[name]
        replica.served_estimate += float(self.trace.estimates[request])
        replica.queued_pairs -= pairs
        replica.latencies.append((self.now, latency))
        self.latency.append(latency)
        self._tick_latencies.append(latency)
        if replica.draining and replica.free_at <= self.now:
            del self.replicas[name]

    def _busy_so_far(self, replica: Replica) -> float:
        # One request at a time, never idle while work waits: busy so far = work taken - work still ahead.
        return replica.accepted - max(0.0, replica.free_at - self.now)

    def _busy_fraction(self, replica: Replica) -> float:
        busy_total = self._busy_so_far(replica)
        fraction = (busy_total - replica.last_busy) / TICK if replica.busy_marks else 0.0
        replica.last_busy = busy_total
        return min(max(fraction, 0.0), 1.0)

    def _tick(self) -> None:
        running = self._routable()
        samples = max(1, int(self.window / TICK))
        busy, queued, p99s = [], 0.0, [0.0]
        for replica in running:
            replica.busy_marks.append(self._busy_fraction(replica))
            marks = list(replica.busy_marks)[-samples:]
            busy.append(sum(marks) / len(marks))
            queued += max(0.0, replica.free_at - self.now) * self.cost.tokens_per_second * replica.speed
            busy_so_far = self._busy_so_far(replica)
            if self.scenario.weighted and busy_so_far >= MIN_BUSY_FOR_SPEED_SECONDS:  # as ReplicaCore reports it
                speed = replica.served_estimate / busy_so_far
                self.ledger.reported(replica.name, {"origins": {}, "tokens_per_second": speed})
            while replica.latencies and replica.latencies[0][0] < self.now - 30:
                replica.latencies.popleft()
            if replica.latencies:
                p99s.append(float(np.percentile([s for _, s in replica.latencies], 99)))
        starting = [r for r in self.replicas.values() if r.ready_at > self.now and not r.draining]
        target = len(running) + len(starting)
        if self.scenario.autoscale:
            utilisation = sum(busy) / len(busy) if busy else 0.0
            signals = Signals(len(running), target, utilisation, queued, max(p99s) * 1000)
            decision = decide(self.config, self.state, signals, self.now)
            self.state = decision.state
            if decision.replicas > target:
                for _ in range(decision.replicas - target):
                    self._add(self.now + float(self.rng.uniform(*self.cold_start)))
            elif decision.replicas < target:
                self._remove_one(starting, running)
            if decision.replicas != target:
                self.events.append((self.now, target, decision.replicas, decision.reason))
                target = decision.replicas
        tick_p99 = percentile(self._tick_latencies, 99) if self._tick_latencies else 0.0
        self._tick_latencies = []
        self.timeline.append((self.now, target, len(running), tick_p99))

    def _remove_one(self, starting: list[Replica], running: list[Replica]) -> None:
        if starting:  # cancel a replica that is still loading before touching one that serves
            del self.replicas[starting[-1].name]
            return
        loads = {load.replica: load.tokens for load in self.ledger.loads([r.name for r in running])}
        victim = min(running, key=lambda r: loads[r.name])
        victim.draining = True
        if victim.free_at <= self.now:
            del self.replicas[victim.name]

    def _replica_hours(self) -> float:
        """What the fleet costs: replicas paid for (the target, starting ones included) integrated over time."""
        hours = 0.0
        for (start, target, _, _), (end, _, _, _) in zip(self.timeline, self.timeline[1:], strict=False):
            hours += target * (end - start) / 3600
        return round(hours, 2)

    def _summary(self, wall: float) -> dict[str, Any]:
        ups = sum(1 for _, a, b, _ in self.events if b > a)
        return {
            "scenario": self.scenario.name,
            "requests": len(self.trace.arrivals),
            "rejected": self.rejected,
            "p50_s": percentile(self.latency, 50),
            "p99_s": percentile(self.latency, 99),
            "p999_s": percentile(self.latency, 99.9),
            "replica_hours": self._replica_hours(),
            "max_replicas": max(t for _, t, _, _ in self.timeline),
            "min_replicas": min(t for _, t, _, _ in self.timeline),
            "scale_ups": ups,
            "scale_downs": len(self.events) - ups,
            "sim_seconds": wall,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000, help="base requests/s")
    parser.add_argument("--peak", type=float, default=2000, help="peak requests/s")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply both rates (and the fleet) by this")
    parser.add_argument("--duration", type=float, default=900)
    parser.add_argument("--tokens-per-second", type=float, default=400_000, help="one replica's speed (a GPU)")
    parser.add_argument("--cold-start-min", type=float, default=30)
    parser.add_argument("--cold-start-max", type=float, default=60)
    parser.add_argument("--max-replicas", type=int, default=100)
    parser.add_argument("--max-queued-pairs", type=int, default=Settings().max_queued_pairs)
    parser.add_argument(
        "--speeds",
        type=float,
        nargs="+",
        default=[1.0],
        help="relative replica speeds, assigned in turn (e.g. 1 0.5: two hardware generations)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    mixed = len(set(args.speeds)) > 1
    if mixed:  # a routing study: steady load on a fixed fleet, so only the router differs between scenarios
        args.peak = args.rate

    settings = Settings()  # the autoscaling knobs' defaults, as `rerankd serve --autoscale` uses them
    cost = SimulatedReplica(tokens_per_second=args.tokens_per_second)
    trace = make_trace(args, cost, np.random.default_rng(args.seed))
    mean_service = float(np.mean([cost.seconds(t) for t in trace.tokens[:20000]]))
    # Start where the base load needs the fleet to be (the policy's own formula), as a fleet that has been running.
    mean_speed = float(np.mean(args.speeds))
    args.initial = math.ceil(args.rate * args.scale * mean_service / mean_speed / settings.autoscale_target_utilisation)
    # Queue target: about one second of a replica's work (the default, 32,768 tokens, is sized for CPU replicas).
    fleet_settings = {
        "autoscale": f"{max(1, args.initial // 2)}:{args.max_replicas}",
        "autoscale_target_queued_tokens": int(args.tokens_per_second),
    }
    config = AutoscaleConfig.from_settings(settings.model_copy(update=fleet_settings))
    # The fleet a static deployment needs for the peak: the same formula at the peak rate.
    peak_sized = math.ceil(args.peak * args.scale * mean_service / mean_speed / settings.autoscale_target_utilisation)
    scenarios = [
        Scenario("tokens + autoscale", "tokens", True),
        Scenario("round-robin + autoscale", "round-robin", True),
        Scenario(f"tokens, fixed {args.initial} (base-sized)", "tokens", False),
        Scenario(f"tokens, fixed {peak_sized} (peak-sized)", "tokens", False, replicas=peak_sized),
    ]
    if mixed:
        scenarios = [
            Scenario(f"tokens, speed-weighted, fixed {args.initial}", "tokens", False),
            Scenario(f"tokens, unweighted, fixed {args.initial}", "tokens", False, weighted=False),
            Scenario(f"round-robin, fixed {args.initial}", "round-robin", False),
        ]
    result_name = "simulate_fleet_mixed" if mixed else "simulate_fleet"
    print(
        f"{len(trace.arrivals)} requests over {args.duration:.0f} s; mean service {mean_service * 1000:.1f} ms "
        f"(cost model: {args.tokens_per_second:.0f} tokens/s per replica); start with {args.initial} replicas; "
        f"autoscale {config.min_replicas}:{config.max_replicas}, cold starts {args.cold_start_min:.0f}-"
        f"{args.cold_start_max:.0f} s; replica speeds {args.speeds}",
        flush=True,
    )
    results, timelines, events = [], {}, {}
    for scenario in scenarios:
        simulation = Simulation(scenario, trace, cost, config, args)
        row = simulation.run()
        results.append(row)
        timelines[scenario.name] = simulation.timeline
        events[scenario.name] = simulation.events
        print(format_table([row], list(row)), flush=True)
    print()
    print(format_table(results, list(results[0])))
    for name, found in events.items():
        print(f"{name}: scale events {[(round(t), a, b) for t, a, b, _ in found]}")
    save(
        result_name,
        {"args": vars(args), "mean_service_s": mean_service, "results": results, "events": events,
         "timelines": {k: v[::5] for k, v in timelines.items()}},
    )  # fmt: skip
    plot(timelines, trace, args, result_name)


def plot(timelines: dict[str, list], trace: Trace, args: argparse.Namespace, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (load, replicas, latency) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    counts, edges = np.histogram(trace.arrivals, bins=np.arange(0, args.duration + 10, 10))
    load.plot(edges[:-1], counts / 10)
    load.set_ylabel("requests/s")
    load.set_title("Simulated fleet: router and autoscaler from rerankd.fleet, 30-60 s cold starts")
    for scenario, timeline in timelines.items():
        t = [row[0] for row in timeline]
        replicas.step(t, [row[1] for row in timeline], where="post", label=scenario)
        latency.plot(t, [row[3] for row in timeline], label=scenario, linewidth=0.8)
    replicas.set_ylabel("replicas (target)")
    replicas.legend(fontsize=8)
    latency.set_ylabel("p99 per second (s)")
    latency.set_yscale("log")
    latency.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(plot_path(name), dpi=110)


if __name__ == "__main__":
    main()
