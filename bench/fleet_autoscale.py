"""Autoscale test on a real Ray Serve fleet of cost-model replicas (each sleeps per token; cold start emulated).

Three phases, one run:
1. burst: load jumps from ~0.3 to ~2.3 replicas' worth; replicas must be added within the configured delay
   (plus the metrics window the policy reads);
2. stop: the load ends; nothing may scale down before the quiet period, then one replica at a time;
3. oscillation: the load swings on/off faster than the quiet period; scale events may not exceed what the policy
   allows (ups at most one per upscale delay, no downs).

The quiet period is 45 s here instead of the 300 s default, so that the run fits in a few minutes.

    python bench/fleet_autoscale.py
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import threading
import time
from typing import Any

import numpy as np
from common import format_table, percentile, plot_path, save
from fleet_workload import make_requests, open_loop, poisson_times, wait_ready

from rerankd.config import Settings
from rerankd.fleet.costmodel import CostModel
from rerankd.fleet.launch import Fleet
from rerankd.fleet.netns import loopback_only

ACTIVE_STATES = ("STARTING", "RUNNING", "UPDATING", "RECOVERING")


def watch(fleet: Fleet, stop: threading.Event, timeline: list[tuple[float, int, int]], t0: float) -> None:
    """(time, replicas asked for, replicas running) twice a second."""
    while not stop.is_set():
        states = fleet.replica_states()
        timeline.append(
            (time.perf_counter() - t0, sum(states.get(s, 0) for s in ACTIVE_STATES), states.get("RUNNING", 0))
        )
        stop.wait(0.5)


def events(timeline: list[tuple[float, int, int]]) -> list[tuple[float, int, int]]:
    """(time, from, to) whenever the replica count asked for changes."""
    found = []
    for (_, before, _), (t, after, _) in itertools.pairwise(timeline):
        if after != before:
            found.append((t, before, after))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upscale-seconds", type=float, default=5)
    parser.add_argument("--downscale-seconds", type=float, default=45)
    parser.add_argument("--cold-start", type=float, default=10, help="emulated model load time per replica (s)")
    parser.add_argument("--port", type=int, default=8433)
    args = parser.parse_args()

    cost = CostModel(tokens_per_second=3000, cold_start_seconds=args.cold_start)
    settings = Settings(
        autoscale="1:4", autoscale_upscale_seconds=args.upscale_seconds,
        autoscale_downscale_seconds=args.downscale_seconds, replica_cpus=0.25, port=args.port, log_level="warning",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    template = make_requests(rng, [40] * 50, words=(8, 12))
    seconds_each = float(np.mean([cost.seconds(cost.tokens(r.query, r.documents)) for r in template]))
    low, high = 0.3 / seconds_each, 2.3 / seconds_each  # requests/s for 0.3 and 2.3 busy replicas

    # Phase plan (start, end, rate): warm 15 s, burst 40 s, stop 120 s, then 6 cycles of 10 s on / 10 s off.
    burst_at, stop_at, oscillate_at = 15.0, 55.0, 175.0
    plan = [(0.0, burst_at, low), (burst_at, stop_at, high)]
    plan += [(oscillate_at + 20 * i, oscillate_at + 20 * i + 10, high) for i in range(6)]
    end = oscillate_at + 120
    times: list[float] = []
    for i, (start, stop, rate) in enumerate(plan):
        arrivals = poisson_times(rate, int(rate * (stop - start) * 2) + 10, seed=i, start=start)
        times += [t for t in arrivals if t < stop]
    requests = [template[i % len(template)] for i in range(len(times))]

    timeline: list[tuple[float, int, int]] = []
    with loopback_only() as isolated, Fleet(settings, cost=cost, num_cpus=2) as fleet:
        wait_ready(fleet.url)
        t0 = time.perf_counter()
        halt = threading.Event()
        watcher = threading.Thread(target=watch, args=(fleet, halt, timeline, t0), daemon=True)
        watcher.start()
        result = asyncio.run(open_loop(fleet.url, requests, times, max_seconds=end))
        while time.perf_counter() - t0 < end:  # watch until the end of the last quiet phase
            time.sleep(0.5)
        halt.set()
        watcher.join()

    changes = events(timeline)
    ups = [e for e in changes if e[2] > e[1]]
    downs = [e for e in changes if e[2] < e[1]]
    first_up = next((t for t, _, _ in ups if t >= burst_at), float("nan"))
    burst_ups = [t for t, _, _ in ups if burst_at <= t < stop_at + 10]
    last_event_before_quiet = max([t for t, _, _ in changes if t < stop_at + 10], default=stop_at)
    quiet_downs = [t for t, _, _ in downs if stop_at <= t < oscillate_at]
    oscillation = [e for e in changes if e[0] >= oscillate_at]
    window = max(2.0, min(30.0, args.upscale_seconds))
    osc_allowed_ups = int(120 // args.upscale_seconds)
    latencies = [o.latency for o in result.ok]
    rows: list[dict[str, Any]] = [
        {
            "check": "burst: first scale-up after (s)",
            "measured": first_up - burst_at,
            "limit": args.upscale_seconds + window,
            "ok": first_up - burst_at <= args.upscale_seconds + window + 2,
        },
        {
            "check": "stop: first scale-down after last event (s)",
            "measured": (quiet_downs[0] - last_event_before_quiet) if quiet_downs else float("nan"),
            "limit": args.downscale_seconds,
            "ok": not quiet_downs or quiet_downs[0] - last_event_before_quiet >= args.downscale_seconds - 1,
        },
        {
            "check": "stop: replicas removed at once (max)",
            "measured": max((b - a for _, b, a in downs), default=0),
            "limit": 1,
            "ok": all(b - a == 1 for _, b, a in downs),
        },
        {
            "check": "oscillation: scale events",
            "measured": len(oscillation),
            "limit": osc_allowed_ups,
            "ok": len(oscillation) <= osc_allowed_ups and not [e for e in oscillation if e[2] < e[1]],
        },
    ]
    print(format_table(rows, ["check", "measured", "limit", "ok"]))
    print(f"scale events (t, from, to): {[(round(t, 1), a, b) for t, a, b in changes]}")
    print(
        f"requests {len(result.outcomes)}, failed {len(result.failed)}, p50 {percentile(latencies, 50):.2f}s, "
        f"p99 {percentile(latencies, 99):.2f}s; cost-model replicas (sleep {seconds_each * 1000:.0f} ms per "
        f"request, cold start {args.cold_start:.0f} s); network namespace: "
        f"{'loopback-only' if isolated else 'host (not isolated)'}"
    )
    save(
        "fleet_autoscale",
        {
            "args": vars(args),
            "checks": rows,
            "events": changes,
            "timeline": timeline,
            "requests": len(result.outcomes),
            "failed": len(result.failed),
            "phases": {"burst_at": burst_at, "stop_at": stop_at, "oscillate_at": oscillate_at},
            "burst_ups": burst_ups,
        },
    )
    plot(timeline, result, plan, (burst_at, stop_at, oscillate_at))


def plot(timeline, result, plan, marks) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.step([t for t, _, _ in timeline], [n for _, n, _ in timeline], where="post", label="replicas asked for")
    top.step([t for t, _, _ in timeline], [n for _, _, n in timeline], where="post", label="replicas running")
    for start, stop, rate in plan:
        top.axvspan(start, stop, alpha=0.08 if rate < 5 else 0.2, color="orange")
    top.set_ylabel("replicas")
    top.legend(loc="upper right")
    top.set_title("Autoscaling a cost-model fleet: burst, stop, oscillation (shaded: load)")
    bottom.scatter([o.sent_at for o in result.ok], [o.latency for o in result.ok], s=4)
    bottom.set_ylabel("latency (s)")
    bottom.set_xlabel("seconds")
    for axis in (top, bottom):
        for mark in marks:
            axis.axvline(mark, color="grey", linestyle=":")
    fig.tight_layout()
    fig.savefig(plot_path("fleet_autoscale"), dpi=110)


if __name__ == "__main__":
    main()
