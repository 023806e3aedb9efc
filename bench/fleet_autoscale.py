"""Autoscale test on a real Ray Serve fleet of cost-model replicas (each sleeps per token; cold start emulated).

Three phases, one run:
1. burst: load jumps from ~0.3 to ~2.3 replicas' worth; replicas must be added within the configured delay
   (plus the metrics window the policy reads);
2. stop: the load ends; nothing may scale down before the quiet period, then one replica at a time (the phase
   outlasts the quiet period, so a run with no scale-down fails);
3. oscillation: the load swings on/off faster than the quiet period; scale events may not exceed what the policy
   allows (ups at most one per upscale delay, no downs).

The quiet period is 45 s here instead of the 300 s default, so that the run fits in a few minutes.

    python bench/fleet_autoscale.py
    python bench/fleet_autoscale.py --recheck   # re-apply the checks to the saved run's events
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import threading
import time

import numpy as np
from common import RESULTS, check, format_table, machine, percentile, plot_path, save
from fleet_workload import make_requests, open_loop, poisson_times, wait_ready

from rerankd.config import Settings
from rerankd.fleet.launch import Fleet
from testing.costmodel import SimulatedReplica
from testing.netns import loopback_only
from testing.simfleet import simulated_fleet

ACTIVE_STATES = ("STARTING", "RUNNING", "UPDATING", "RECOVERING")
# Phase plan: warm 15 s, burst 40 s, stop 120 s, then 6 cycles of 10 s on / 10 s off.
BURST_AT, STOP_AT, OSCILLATE_AT, OSCILLATION_SECONDS = 15.0, 55.0, 175.0, 120.0


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


def checks(changes: list[tuple[float, int, int]], upscale_seconds: float, downscale_seconds: float) -> list[dict]:
    """The pass/fail rows for one run's scale events (time, from, to)."""
    ups = [e for e in changes if e[2] > e[1]]
    downs = [e for e in changes if STOP_AT <= e[0] < OSCILLATE_AT and e[2] < e[1]]
    first_up = next((t for t, _, _ in ups if t >= BURST_AT), math.nan)
    last_event_before_quiet = max([t for t, _, _ in changes if t < STOP_AT + 10], default=STOP_AT)
    oscillation = [e for e in changes if e[0] >= OSCILLATE_AT]
    window = max(2.0, min(30.0, upscale_seconds))  # the metrics window Ray averages the policy's inputs over
    allowed_ups = OSCILLATION_SECONDS // upscale_seconds
    # The stop phase is longer than the quiet period, so no scale-down at all is a failure, not a pass.
    first_down = downs[0][0] - last_event_before_quiet if downs else math.nan
    return [
        check("burst: first scale-up after (s)", first_up - BURST_AT, "<=", upscale_seconds + window),
        check("stop: first scale-down after last event (s)", first_down, ">=", downscale_seconds),
        check("stop: replicas removed at once (max)", max((b - a for _, b, a in downs), default=math.nan), "<=", 1),
        check("oscillation: scale-ups", sum(b > a for _, a, b in oscillation), "<=", allowed_ups),
        check("oscillation: scale-downs", sum(b < a for _, a, b in oscillation), "<=", 0),
    ]


def recheck() -> None:
    """Re-applies `checks` to the events saved in the results file, so a fixed check needs no 5-minute re-run."""
    path = RESULTS / "fleet_autoscale.json"
    record = json.loads(path.read_text())
    run = record["args"]
    record["checks"] = checks([tuple(e) for e in record["events"]], run["upscale_seconds"], run["downscale_seconds"])
    record["checks_recomputed"] = machine()["time"]
    path.write_text(json.dumps(record, indent=2))
    print(format_table(record["checks"], ["check", "measured", "limit", "ok"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upscale-seconds", type=float, default=5)
    parser.add_argument("--downscale-seconds", type=float, default=45)
    parser.add_argument("--cold-start", type=float, default=10, help="emulated model load time per replica (s)")
    parser.add_argument("--port", type=int, default=8433)
    parser.add_argument("--recheck", action="store_true", help="re-check the saved run; no fleet")
    args = parser.parse_args()
    if args.recheck:
        recheck()
        return

    cost = SimulatedReplica(tokens_per_second=3000, cold_start_seconds=args.cold_start)
    settings = Settings(
        autoscale="1:4", autoscale_upscale_seconds=args.upscale_seconds,
        autoscale_downscale_seconds=args.downscale_seconds, replica_cpus=0.25, port=args.port, log_level="warning",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    template = make_requests(rng, [40] * 50, words=(8, 12))
    seconds_each = float(np.mean([cost.seconds(cost.tokens(r.query, r.documents)) for r in template]))
    low, high = 0.3 / seconds_each, 2.3 / seconds_each  # requests/s for 0.3 and 2.3 busy replicas

    plan = [(0.0, BURST_AT, low), (BURST_AT, STOP_AT, high)]
    plan += [(OSCILLATE_AT + 20 * i, OSCILLATE_AT + 20 * i + 10, high) for i in range(6)]
    end = OSCILLATE_AT + OSCILLATION_SECONDS
    times: list[float] = []
    for i, (start, stop, rate) in enumerate(plan):
        arrivals = poisson_times(rate, int(rate * (stop - start) * 2) + 10, seed=i, start=start)
        times += [t for t in arrivals if t < stop]
    requests = [template[i % len(template)] for i in range(len(times))]

    timeline: list[tuple[float, int, int]] = []
    with loopback_only() as isolated, simulated_fleet(settings, cost, num_cpus=2) as fleet:
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
    rows = checks(changes, args.upscale_seconds, args.downscale_seconds)
    latencies = [o.latency for o in result.ok]
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
            "phases": {"burst_at": BURST_AT, "stop_at": STOP_AT, "oscillate_at": OSCILLATE_AT},
        },
    )
    plot(timeline, result, plan, (BURST_AT, STOP_AT, OSCILLATE_AT))


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
