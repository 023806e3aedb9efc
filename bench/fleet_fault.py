"""Fault test: kill one model replica's process (SIGKILL) in the middle of a bounded load run.

Counts requests lost (anything but 200), requests the ingress retried, and how long Ray took to notice the death
and to have a replacement replica serving. Runs Ray in a loopback-only network namespace when it can.

Checks (each applies the limit it prints; a kill that never happened leaves NaN or inf, which fails): every request
sent and none lost; the death noticed within DETECT_SECONDS and a replacement serving within REPLACE_SECONDS.

    python bench/fleet_fault.py                 # ce-fixture replicas (real engine)
    python bench/fleet_fault.py --cost-model    # cost-model replicas (sleep per token)
    python bench/fleet_fault.py --recheck       # re-apply the checks to both saved runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import threading
import time

import numpy as np
from common import RESULTS, check, format_table, machine, plot_path, save
from fleet_workload import Outcome, closed_loop, make_requests, metric, wait_ready

from rerankd.config import Settings
from rerankd.fleet.launch import Fleet
from testing.costmodel import SimulatedReplica
from testing.netns import loopback_only
from testing.processes import replica_pids
from testing.simfleet import simulated_app

DETECT_SECONDS = 30.0  # Ray's controller notices a dead actor within seconds; 30 s means it did not
REPLACE_SECONDS = 90.0  # notice + a replica's cold start (model load and warm-up) on a busy machine


def checks(row: dict, requests: int) -> list[dict]:
    """The run's checks; `requests` is how many were meant to be sent (a run cut short fails)."""
    return [
        check("requests answered or failed", row["requests"], ">=", requests),
        check("requests lost (anything but 200)", row["lost"], "<=", 0),
        check("Ray noticed the death after (s)", row["detect_s"], "<=", DETECT_SECONDS),
        check("replacement serving after (s)", row["replace_s"], "<=", REPLACE_SECONDS),
    ]


def recheck() -> None:
    """Re-applies `checks` to the saved runs, so a changed check needs no Ray re-run."""
    for name in ("fleet_fault", "fleet_fault_cost"):
        path = RESULTS / f"{name}.json"
        record = json.loads(path.read_text())
        record["checks"] = checks(record["result"], record["args"]["requests"])
        record["checks_recomputed"] = machine()["time"]
        path.write_text(json.dumps(record, indent=2))
        print(name)
        print(format_table(record["checks"], ["check", "measured", "limit", "ok"]))


def watch_replicas(fleet: Fleet, stop: threading.Event, timeline: list[tuple[float, int]], t0: float) -> None:
    while not stop.is_set():
        timeline.append((time.perf_counter() - t0, fleet.replica_states().get("RUNNING", 0)))
        stop.wait(0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cost-model", action="store_true", help="cost-model replicas instead of ce-fixture")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--documents", type=int, default=8, help="documents per request")
    parser.add_argument("--kill-after", type=int, default=60, help="kill a replica after this many answers")
    parser.add_argument("--port", type=int, default=8431)
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--recheck", action="store_true", help="re-apply the checks to the saved runs and exit")
    args = parser.parse_args()
    if args.recheck:
        return recheck()

    cost = SimulatedReplica(tokens_per_second=4000, cold_start_seconds=5) if args.cost_model else None
    app = simulated_app(cost) if cost else None
    settings = Settings(
        model=["ce-fixture"], replicas=args.replicas, replica_cpus=2 / args.replicas, warmup_seconds=0,
        port=args.port, log_level="warning",
    )  # fmt: skip
    requests = make_requests(np.random.default_rng(0), [args.documents] * args.requests, words=(10, 40))
    kill: dict[str, float] = {}
    timeline: list[tuple[float, int]] = []

    with loopback_only() as isolated, Fleet(settings, app=app, num_cpus=2) as fleet:
        wait_ready(fleet.url)
        before = replica_pids()
        t0 = time.perf_counter()
        stop = threading.Event()
        watcher = threading.Thread(target=watch_replicas, args=(fleet, stop, timeline, t0), daemon=True)
        watcher.start()

        def on_done(_: Outcome, done: int) -> None:
            if done == args.kill_after and not kill:
                victim = before[0]
                os.kill(victim, signal.SIGKILL)
                kill.update(pid=victim, at=time.perf_counter() - t0)

        result = asyncio.run(
            closed_loop(fleet.url, requests, args.concurrency, max_seconds=args.max_seconds, on_done=on_done)
        )
        # Keep watching until the replacement serves (bounded), then read the ingress's counters.
        deadline = time.perf_counter() + 180
        while time.perf_counter() < deadline and not any(
            t > kill.get("at", 0) and n >= args.replicas for t, n in timeline if t > detected_at(timeline, kill)
        ):
            time.sleep(0.5)
        stop.set()
        watcher.join()
        retries = metric(fleet.url, "rerankd_fleet_retries_total")
        lost_after_retry = metric(fleet.url, "rerankd_fleet_lost_total")
        after = replica_pids()

    detected = detected_at(timeline, kill)
    replaced = next((t for t, n in timeline if t > detected and n >= args.replicas), float("nan"))
    row = {
        "replicas": "cost-model" if cost else "ce-fixture",
        "requests": len(result.outcomes),
        "ok": len(result.ok),
        "lost": len(result.failed),
        "retried": int(retries),
        "failed_twice": int(lost_after_retry),
        "detect_s": detected - kill.get("at", float("nan")),
        "replace_s": replaced - kill.get("at", float("nan")),
    }
    rows = checks(row, args.requests)
    print(format_table([row], list(row)))
    print(format_table(rows, ["check", "measured", "limit", "ok"]))
    print(
        f"killed pid {kill.get('pid')} at {kill.get('at', float('nan')):.1f}s; replicas before {before}, after {after}"
    )
    print(f"network namespace: {'loopback-only' if isolated else 'host (not isolated)'}")
    name = "fleet_fault_cost" if cost else "fleet_fault"
    save(
        name,
        {"args": vars(args), "result": row, "checks": rows, "kill": kill, "timeline": timeline, "isolated": isolated},
    )
    plot(name, result.outcomes, timeline, kill)


def detected_at(timeline: list[tuple[float, int]], kill: dict[str, float]) -> float:
    """When Ray first counted fewer running replicas after the kill (inf before it does)."""
    full = max((n for _, n in timeline), default=0)
    return next((t for t, n in timeline if t > kill.get("at", float("inf")) and n < full), float("inf"))


def plot(name: str, outcomes: list[Outcome], timeline: list[tuple[float, int]], kill: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ok = [o for o in outcomes if o.status == 200]
    bad = [o for o in outcomes if o.status != 200]
    top.scatter([o.sent_at for o in ok], [o.latency for o in ok], s=6, label="answered 200")
    top.scatter([o.sent_at for o in bad], [o.latency for o in bad], s=20, c="red", label="lost")
    top.set_ylabel("latency (s)")
    top.legend()
    bottom.step([t for t, _ in timeline], [n for _, n in timeline], where="post")
    bottom.set_ylabel("running replicas")
    bottom.set_xlabel("seconds")
    for axis in (top, bottom):
        if "at" in kill:
            axis.axvline(kill["at"], color="red", linestyle="--")
    top.set_title("Replica killed (SIGKILL) under load")
    fig.tight_layout()
    fig.savefig(plot_path(name), dpi=110)


if __name__ == "__main__":
    main()
