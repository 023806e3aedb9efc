"""Cache-affinity routing in the fleet simulator: `tokens` routing with and without the affinity term.

The discrete-event simulation of bench/simulate_fleet.py (the product's `pick_replica` and `WorkLedger`, replicas
from `testing.costmodel.SimulatedReplica`, one request at a time each, in arrival order), on a fixed fleet at a
steady load, with two additions:

- a workload with repeated queries: a share of requests (`--repeat-fraction`) follows up a request that arrived
  in the last `--repeat-window` seconds, with the same query and as many documents: either the same documents (a
  retry, an agent re-ranking the same set; `--same-share` of follow-ups) or the next page, half of them new;
- each replica's score cache: a bounded LRU of (query, document) pairs, sized as `score_cache_mb` holds them. A
  pair the replica has cached costs `--hit-cost` of its inference (by default the ratio measured for a repeated
  100-document request in bench/results/score_cache.json); a request's cost is the cost model's for its
  uncached pairs plus that for the cached ones.

The router never sees the cache: it routes on estimated tokens, as in production, and the affinity term only
knows which replica last served the query. Each load level (`--loads`: offered work as a fraction of the fleet's
capacity without any cache) runs every scenario on one trace.

    python bench/simulate_cache_affinity.py              # 3 loads x 3 scenarios, ~15 min on 2 shared cores
    python bench/simulate_cache_affinity.py --duration 60 --replicas 8   # quick look
"""

from __future__ import annotations

import argparse
import json
import tracemalloc
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from common import RESULTS, format_table, plot_path, save
from simulate_fleet import Replica, Scenario, Simulation, Trace, make_trace

from rerankd.config import Settings
from rerankd.engine.score_cache import ENTRY_OVERHEAD_BYTES
from rerankd.fleet.autoscale import AutoscaleConfig
from rerankd.fleet.routing import AFFINITY_SLACK, WorkLedger, affinity_key, pick_replica
from testing.costmodel import SimulatedReplica

SCORE_BYTES = 4  # one float32 score per pair (a cross-encoder's row)


@dataclass
class RepeatTrace(Trace):
    queries: np.ndarray  # query id per request (follow-ups share their original's)
    first_document: np.ndarray  # offset of the request's first document in its query's candidate list
    follow_up: np.ndarray  # bool: a repeat or next page of an earlier request


def make_repeat_trace(args: argparse.Namespace, cost: SimulatedReplica, rng: np.random.Generator) -> RepeatTrace:
    trace = make_trace(args, cost, rng)
    n = len(trace.arrivals)
    queries = np.arange(n)
    first = np.zeros(n, dtype=np.int64)
    follow_up = rng.random(n) < args.repeat_fraction
    window_start = np.searchsorted(trace.arrivals, trace.arrivals - args.repeat_window)
    same = rng.random(n) < args.same_share
    for i in np.flatnonzero(follow_up):
        if window_start[i] >= i:  # nothing recent to follow up: a fresh query after all
            follow_up[i] = False
            continue
        j = int(rng.integers(window_start[i], i))
        queries[i] = queries[j]
        trace.pairs[i], trace.tokens[i] = trace.pairs[j], trace.tokens[j]  # a page of the same size and documents
        first[i] = first[j] if same[i] else first[j] + trace.pairs[j] // 2
    # Each request's own estimate noise, as the router would see it (follow-ups copied their original's size).
    trace.estimates = np.maximum(1, trace.tokens * rng.lognormal(0.0, 0.2, n)).astype(np.int64)
    return RepeatTrace(trace.arrivals, trace.pairs, trace.tokens, trace.estimates, queries, first, follow_up)


class PairCache:
    """A replica's score cache, per query: the contiguous run of its candidate documents scored here (a page that
    does not touch the run replaces it, so hits are if anything undercounted), least recently used query first out
    once the pairs exceed `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.pairs = 0
        self._runs: OrderedDict[int, tuple[int, int]] = OrderedDict()

    def score(self, query: int, first: int, count: int) -> int:
        """Score documents [first, first + count) of `query`: how many were cached; they all are afterwards."""
        low, high = first, first + count
        run = self._runs.pop(query, None)
        hits = 0
        if run is not None:
            self.pairs -= run[1] - run[0]
            hits = max(0, min(high, run[1]) - max(low, run[0]))
            if hits:
                low, high = min(low, run[0]), max(high, run[1])
        self._runs[query] = (low, high)
        self.pairs += high - low
        while self.pairs > self.capacity and len(self._runs) > 1:
            _, (a, b) = self._runs.popitem(last=False)
            self.pairs -= b - a
        return hits


@dataclass(frozen=True)
class AffinityScenario(Scenario):
    affinity: bool = False
    slack: float = AFFINITY_SLACK


class CacheSimulation(Simulation):
    """`Simulation` whose replicas cache scores and whose router may use the affinity term."""

    scenario: AffinityScenario
    trace: RepeatTrace

    def __init__(self, scenario: AffinityScenario, trace: RepeatTrace, cost, config, args) -> None:
        super().__init__(scenario, trace, cost, config, args)
        self.capacity = args.cache_pairs
        self.hit_cost = args.hit_cost
        self.caches: dict[str, PairCache] = {}
        self.pairs_scored = 0
        self.pairs_hit = 0
        self.follow_ups_to_previous = [0, 0]  # follow-ups sent where their query went last, all follow-ups
        self.busy_by_replica: dict[str, float] = {}
        self.last_replica: dict[int, str] = {}  # where each query was served last, whatever the router remembers

    def _key(self, i: int) -> str:
        return str(self.trace.queries[i])

    def _choose(self, i: int, names: list[str]) -> int:
        estimate = float(self.trace.estimates[i])
        prefer = self.ledger.affine_replica(self._key(i)) if self.scenario.affinity else None
        loads = self.ledger.loads(names)
        index = pick_replica(
            self.scenario.policy, loads, turn=self.turn, tokens=estimate, prefer=prefer, slack=self.scenario.slack
        )
        if self.trace.follow_up[i]:
            self.follow_ups_to_previous[1] += 1
            self.follow_ups_to_previous[0] += names[index] == self.last_replica.get(int(self.trace.queries[i]))
        return index

    def _service_seconds(self, i: int, replica: Replica) -> float:
        cache = self.caches.setdefault(replica.name, PairCache(self.capacity))
        pairs = int(self.trace.pairs[i])
        hits = cache.score(int(self.trace.queries[i]), int(self.trace.first_document[i]), pairs)
        self.pairs_scored += pairs
        self.pairs_hit += hits
        tokens = float(self.trace.tokens[i]) * (1 - hits / pairs * (1 - self.hit_cost))
        seconds = self.cost.seconds(tokens) / replica.speed
        self.busy_by_replica[replica.name] = self.busy_by_replica.get(replica.name, 0.0) + seconds
        return seconds

    def _book(self, i: int, replica: Replica) -> None:
        affinity = self._key(i) if self.scenario.affinity else None
        self.ledger.routed(str(i), replica.name, int(self.trace.estimates[i]), affinity=affinity)
        self.last_replica[int(self.trace.queries[i])] = replica.name

    def _summary(self, wall: float) -> dict[str, Any]:
        row = super()._summary(wall)
        busy = list(self.busy_by_replica.values())
        duration = float(self.trace.arrivals[-1])
        to_previous, follow_ups = self.follow_ups_to_previous
        return {
            "scenario": row["scenario"],
            "requests": row["requests"],
            "rejected": row["rejected"],
            "p50_s": row["p50_s"],
            "p99_s": row["p99_s"],
            "p999_s": row["p999_s"],
            "pair_hit_rate": self.pairs_hit / max(1, self.pairs_scored),
            "follow_ups_to_previous_replica": to_previous / max(1, follow_ups),
            "utilisation": sum(busy) / (len(self.replicas) * duration),
            "busiest_over_mean": max(busy) / (sum(busy) / len(busy)),
            "sim_seconds": wall,
        }


def affinity_memory_bytes(replicas: int) -> int:
    """Bytes a router's full affinity memory takes (`WorkLedger.AFFINITY_QUERIES` queries), measured."""
    names = [f"replica-{i:04d}-{'x' * 24}" for i in range(replicas)]  # Ray's replica ids are ~30 characters
    keys = [affinity_key("model", f"query number {n}", None) for n in range(WorkLedger.AFFINITY_QUERIES)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ledger = WorkLedger("me")
    for n, key in enumerate(keys):
        ledger.routed(str(n), names[n % replicas], 1, affinity=key)
        ledger.completed(str(n))
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return used


def measured_hit_cost() -> float | None:
    """A cached request's time over an uncached one's, from bench/results/score_cache.json (the repeat row)."""
    path = RESULTS / "score_cache.json"
    if not path.exists():
        return None
    rows = {row["request"]: row for row in json.loads(path.read_text())["rows"]}
    repeat = rows.get("repeat")
    return repeat["cache_on_ms"] / repeat["cache_off_ms"] if repeat else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.7, 0.9], help="offered work / capacity")
    parser.add_argument("--duration", type=float, default=300)
    parser.add_argument("--tokens-per-second", type=float, default=400_000, help="one replica's speed (a GPU)")
    parser.add_argument("--repeat-fraction", type=float, default=0.3, help="share of requests that follow one up")
    parser.add_argument("--repeat-window", type=float, default=30, help="seconds a follow-up comes after")
    parser.add_argument("--same-share", type=float, default=0.5, help="share of follow-ups with the same documents")
    parser.add_argument("--hit-cost", type=float, default=None, help="a cached pair's cost / an uncached one's")
    parser.add_argument("--cache-mb", type=int, default=Settings().score_cache_mb, help="score cache per replica")
    parser.add_argument("--wide-slack", type=float, default=0.25, help="a wider margin, for comparison")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    measured = measured_hit_cost()
    args.hit_cost = args.hit_cost if args.hit_cost is not None else (measured or 0.01)
    args.cache_pairs = args.cache_mb * 2**20 // (SCORE_BYTES + ENTRY_OVERHEAD_BYTES)
    # What Simulation and make_trace read, for a fixed fleet at a steady rate.
    settings = Settings()
    args.scale, args.speeds, args.cold_start_min, args.cold_start_max = 1.0, [1.0], 30.0, 60.0
    args.max_queued_pairs, args.initial = settings.max_queued_pairs, args.replicas
    fixed = settings.model_copy(update={"autoscale": f"{args.replicas}:{args.replicas}"})
    config = AutoscaleConfig.from_settings(fixed)  # unused: no scenario autoscales

    cost = SimulatedReplica(tokens_per_second=args.tokens_per_second)
    probe = make_trace(argparse.Namespace(**{**vars(args), "rate": 1000, "peak": 1000, "duration": 20}), cost,
                       np.random.default_rng(args.seed))  # fmt: skip
    mean_service = float(np.mean([cost.seconds(t) for t in probe.tokens]))
    memory = affinity_memory_bytes(args.replicas)
    print(
        f"{args.replicas} replicas of {args.tokens_per_second:.0f} tokens/s (mean request {mean_service * 1000:.1f} ms "
        f"uncached), {args.duration:.0f} s per run; {args.repeat_fraction:.0%} follow-ups within "
        f"{args.repeat_window:.0f} s ({args.same_share:.0%} same documents, the rest next page); score cache "
        f"{args.cache_mb} MB = {args.cache_pairs:,} pairs per replica, a hit costs {args.hit_cost:.4f} of a miss; "
        f"affinity memory {WorkLedger.AFFINITY_QUERIES:,} queries = {memory / 2**20:.1f} MiB",
        flush=True,
    )
    scenarios = [
        AffinityScenario("tokens", "tokens", False),
        AffinityScenario("tokens + affinity", "tokens", False, affinity=True),
        AffinityScenario(f"tokens + affinity, slack {args.wide_slack:g}", "tokens", False, affinity=True,
                         slack=args.wide_slack),
    ]  # fmt: skip
    results = []
    for load in args.loads:
        args.rate = args.peak = load * args.replicas / mean_service
        trace = make_repeat_trace(args, cost, np.random.default_rng(args.seed))
        for scenario in scenarios:
            simulation = CacheSimulation(scenario, trace, cost, config, args)
            row = {"load": load, "rate": round(args.rate, 1), **simulation.run()}
            results.append(row)
            print(format_table([row], list(row)), flush=True)
    baseline = {r["load"]: r for r in results if r["scenario"] == "tokens"}
    for row in results:
        base = baseline[row["load"]]
        row["p50_vs_tokens"] = row["p50_s"] / base["p50_s"]
        row["p99_vs_tokens"] = row["p99_s"] / base["p99_s"]
        row["utilisation_vs_tokens"] = row["utilisation"] / base["utilisation"]
    columns = ["load", "scenario", "rejected", "p50_s", "p99_s", "p999_s", "pair_hit_rate",
               "follow_ups_to_previous_replica", "utilisation", "busiest_over_mean", "p99_vs_tokens",
               "utilisation_vs_tokens"]  # fmt: skip
    print()
    print(format_table(results, columns))
    save(
        "simulate_cache_affinity",
        {"args": vars(args), "mean_service_s": mean_service, "measured_hit_cost": measured,
         "affinity_memory_bytes": memory, "affinity_queries": WorkLedger.AFFINITY_QUERIES,
         "affinity_slack": AFFINITY_SLACK, "results": results},
    )  # fmt: skip
    plot(results, args)


def plot(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    measures = [("pair_hit_rate", "pairs answered from cache"), ("p99_s", "p99 latency (s)"),
                ("utilisation", "fleet busy fraction")]  # fmt: skip
    for axis, (measure, label) in zip(axes, measures, strict=True):
        for scenario in dict.fromkeys(r["scenario"] for r in results):
            rows = [r for r in results if r["scenario"] == scenario]
            axis.plot([r["load"] for r in rows], [r[measure] for r in rows], marker="o", label=scenario)
        axis.set_xlabel("offered load (uncached work / capacity)")
        axis.set_ylabel(label)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"Cache affinity, simulated: {args.replicas} replicas, {args.repeat_fraction:.0%} follow-ups within "
        f"{args.repeat_window:.0f} s; router from rerankd.fleet"
    )
    fig.tight_layout()
    fig.savefig(plot_path("simulate_cache_affinity"), dpi=110)


if __name__ == "__main__":
    main()
