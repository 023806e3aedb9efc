"""Routing under heavy-tailed request sizes: p99 latency of token-aware routing vs round-robin vs Ray's default.

Document counts are Pareto-distributed over 5-1,000 (most requests small, a few huge); requests arrive open-loop
(Poisson) at ~70% of the fleet's capacity. Every policy gets the very same requests at the very same times.

Two runs, both reported:
- cost-model replicas: each replica's work is an explicit cost model, a sleep of 2 ms + tokens / rate, one
  request at a time; no CPU is used, so the 2-core machine does not distort the comparison.
- ce-fixture replicas: the real engine (MiniLM-L6 cross-encoder shape), one thread per replica; here the
  replicas, the proxy and the load generator share 2 cores.

    python bench/routing.py                     # both runs
    python bench/routing.py --mode cost --requests 600   # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import numpy as np
from common import RESULTS, format_table, percentile, plot_path, save
from fleet_workload import (
    LoadResult,
    Request,
    closed_loop,
    make_requests,
    open_loop,
    pareto_counts,
    poisson_times,
    wait_ready,
)

from rerankd.config import Settings
from rerankd.fleet.launch import Fleet
from testing.costmodel import SimulatedReplica
from testing.netns import loopback_only
from testing.simfleet import simulated_fleet

POLICIES = ("tokens", "round-robin", "power-of-two")
WARMUP_REQUESTS = 20
SMALL = 100  # documents: requests up to this size are ~95% of the traffic, and the ones a bad route hurts most


def summarise(policy: str, result: LoadResult) -> dict[str, Any]:
    latencies = [o.latency for o in result.ok]
    small = [o.latency for o in result.ok if o.documents <= SMALL]
    return {
        "policy": policy,
        "requests": len(result.outcomes),
        "failed": len(result.failed),
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies, default=float("nan")),
        f"p99_le{SMALL}docs_s": percentile(small, 99),
        "mean_s": float(np.mean(latencies)) if latencies else float("nan"),
    }


def run_policies(fleet: Fleet, settings: Settings, requests: list[Request], rate: float):
    rows = []
    for policy in POLICIES:
        fleet.deploy(settings.model_copy(update={"routing": policy}))
        wait_ready(fleet.url)
        asyncio.run(closed_loop(fleet.url, requests[:WARMUP_REQUESTS], concurrency=2))
        times = poisson_times(rate, len(requests), seed=1)
        result = asyncio.run(open_loop(fleet.url, requests, times, max_seconds=900))
        row = summarise(policy, result)
        rows.append(row)
        print(format_table([row], list(row)), flush=True)
    base = next(r["p99_s"] for r in rows if r["policy"] == "round-robin")
    for row in rows:
        row["p99_vs_round_robin"] = row["p99_s"] / base
    return rows


def cost_run(args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    requests = make_requests(rng, pareto_counts(rng, args.requests), words=(10, 40))
    overhead = 0.002
    mean_tokens = float(np.mean([SimulatedReplica().tokens(r.query, r.documents) for r in requests]))
    # Pick the replicas' speed so that the arrival rate below is `utilisation` of the fleet's capacity.
    mean_seconds = args.utilisation * args.replicas / args.rate
    cost = SimulatedReplica(tokens_per_second=mean_tokens / (mean_seconds - overhead), overhead_seconds=overhead)
    settings = Settings(model=["ce-fixture"], replicas=args.replicas, replica_cpus=0.1, port=args.port)
    with simulated_fleet(settings, cost, num_cpus=2) as fleet:
        rows = run_policies(fleet, settings, requests, args.rate)
    return {
        "replicas": args.replicas,
        "rate_per_s": args.rate,
        "cost_model": {"tokens_per_second": cost.tokens_per_second, "overhead_seconds": overhead},
        "mean_service_s": mean_seconds,
        "rows": rows,
    }


def real_run(args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    requests = make_requests(rng, pareto_counts(rng, args.real_requests), words=(5, 20))
    settings = Settings(
        model=["ce-fixture"], replicas=args.real_replicas, replica_cpus=1, warmup_seconds=0, port=args.port
    )
    tokens = SimulatedReplica().tokens  # an estimate of a request's work; a ratio of two of them is all that is used
    with Fleet(settings, num_cpus=args.real_replicas) as fleet:
        wait_ready(fleet.url)
        # Capacity in tokens/s, from the same size mix in a closed loop that keeps every replica busy. Measured in
        # tokens, not requests: a few huge requests decide a heavy-tailed sample's request rate.
        sample = make_requests(rng, pareto_counts(rng, args.calibration_requests), words=(5, 20))
        calibration = asyncio.run(closed_loop(fleet.url, sample, concurrency=2 * args.real_replicas))
        if len(calibration.ok) != len(sample):
            raise SystemExit(f"calibration: {len(calibration.ok)} of {len(sample)} requests answered; is the fleet up?")
        capacity_tokens = sum(tokens(r.query, r.documents) for r in sample) / calibration.wall_seconds
        mean_tokens = float(np.mean([tokens(r.query, r.documents) for r in requests]))
        rate = args.utilisation * capacity_tokens / mean_tokens
        print(f"ce-fixture capacity {capacity_tokens:.0f} tokens/s; offering {rate:.2f} requests/s", flush=True)
        rows = run_policies(fleet, settings, requests, rate)
    return {
        "replicas": args.real_replicas,
        "capacity_tokens_per_s": capacity_tokens,
        "capacity_per_s": capacity_tokens / mean_tokens,
        "rate_per_s": rate,
        "rows": rows,
    }


def keep_earlier(results: dict[str, Any]) -> dict[str, Any]:
    """Each run stamped with when it was measured; a run this invocation skipped (`--mode`) is kept from the
    last saved file, with its own stamp, so one mode can be re-measured without losing the other."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = RESULTS / "routing.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    kept = {}
    for name, run in results.items():
        if run is not None:
            kept[name] = {**run, "measured": now}
        elif earlier.get(name):
            kept[name] = {**earlier[name], "measured": earlier[name].get("measured", earlier["machine"]["time"])}
        else:
            kept[name] = None
    return kept


def plot(results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(name, run) for name, run in results.items() if run]
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), squeeze=False)
    for axis, (name, run) in zip(axes[0], runs, strict=True):
        policies = [row["policy"] for row in run["rows"]]
        x = np.arange(len(policies))
        for offset, key in ((-0.2, "p50_s"), (0.0, "p95_s"), (0.2, "p99_s")):
            axis.bar(x + offset, [row[key] for row in run["rows"]], width=0.2, label=key.removesuffix("_s"))
        axis.set_xticks(x, policies)
        axis.set_ylabel("latency (s)")
        axis.set_title(f"{name}: {run['replicas']} replicas, ~70% utilisation")
        axis.legend()
    fig.tight_layout()
    fig.savefig(plot_path("routing"), dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["cost", "real", "both"], default="both")
    parser.add_argument("--replicas", type=int, default=3, help="cost-model replicas")
    parser.add_argument("--rate", type=float, default=30.0, help="requests/s offered to the cost-model fleet")
    parser.add_argument("--requests", type=int, default=2000, help="requests per policy, cost-model run")
    parser.add_argument("--real-replicas", type=int, default=2)
    parser.add_argument("--real-requests", type=int, default=500, help="requests per policy, ce-fixture run")
    parser.add_argument("--calibration-requests", type=int, default=150, help="closed-loop capacity sample")
    parser.add_argument("--utilisation", type=float, default=0.7)
    parser.add_argument("--port", type=int, default=8432)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    results: dict[str, Any] = {"cost-model": None, "ce-fixture": None}
    with loopback_only() as isolated:
        if args.mode in ("cost", "both"):
            results["cost-model"] = cost_run(args, np.random.default_rng(args.seed))
        if args.mode in ("real", "both"):
            results["ce-fixture"] = real_run(args, np.random.default_rng(args.seed))

    columns = ["policy", "requests", "failed", "p50_s", "p95_s", "p99_s", "max_s", "mean_s", f"p99_le{SMALL}docs_s"]
    columns.append("p99_vs_round_robin")
    for name, run in results.items():
        if run:
            print(f"\n{name} replicas x{run['replicas']}, offered {run['rate_per_s']:.2f} requests/s:")
            if name == "cost-model":
                model = run["cost_model"]
                print(
                    f"(each replica sleeps {model['overhead_seconds'] * 1000:.0f} ms + tokens / "
                    f"{model['tokens_per_second']:.0f} per request, one at a time: a cost model, not inference)"
                )
            print(format_table(run["rows"], columns))
    print(f"network namespace: {'loopback-only' if isolated else 'host (not isolated)'}")
    results = keep_earlier(results)
    save("routing", {"args": vars(args), "isolated": isolated, **results})
    plot(results)


if __name__ == "__main__":
    main()
