"""Node loss on a real multi-node Ray cluster: the fleet at ~70% of its measured capacity, one worker node killed.

Three Ray nodes on this machine, each in a network namespace of its own on a private bridge
(`testing.cluster`: head + two workers, 1 CPU each); `rerankd serve --ray-address` on the head with 3
ce-fixture replicas of 0.5 CPU (one per node), Serve's proxy on every node, the shipped nginx config in front
of the three proxies. Then:

1. capacity: a closed loop (`--probe-clients` clients, `--probe-requests` requests) measures requests/s;
2. load: Poisson arrivals at `--load` x capacity for `--seconds`; at `--kill-at` s every process of the worker node
   that holds a model replica and an ingress replica is killed (SIGKILL, the whole namespace);
3. the head node killed too (`--head-loss-seconds`, 0 to skip): how long requests and the surviving worker's
   processes last without the GCS.

Reports requests lost (5xx or no answer; 429s, turned away with Retry-After, are counted apart), retried (by
nginx, from its access log, and by the ingress on another replica), p99 before / during (kill -> replacement
running) / after, when the router last sent work to a dead replica (a retry) and nginx last tried the dead node,
when Ray/the ingress noticed, and when the replacement ran.

    sudo python bench/fleet_nodes.py            # needs root (namespaces), iproute2 and nginx; about 6 minutes
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from common import check, format_table, percentile, plot_path, save
from fleet_workload import Outcome, closed_loop, make_requests, open_loop, poisson_times

from testing.cluster import Cluster, ClusterFleet, Watch, namespace_pids, read_access_log, serve_roles

REPLICAS = 3
AVOID_SECONDS = 5.0  # the router must stop sending to a dead node's replicas within this


def lost(outcome: Outcome) -> bool:
    """An accepted request that did not get its answer: 5xx, a transport error, anything but 200 and 429."""
    return outcome.status not in (200, 429)


def window(outcomes: list[Outcome], start: float, end: float) -> dict[str, Any]:
    """Requests sent in [start, end): count, lost, p50/p99 latency."""
    inside = [o for o in outcomes if start <= o.sent_at < end]
    latencies = [o.latency for o in inside if o.status == 200]
    return {
        "from_s": start,
        "to_s": end,
        "requests": len(inside),
        "lost": sum(lost(o) for o in inside),
        "rejected_429": sum(o.status == 429 for o in inside),
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=8, help="documents per request")
    parser.add_argument("--probe-clients", type=int, default=6)
    parser.add_argument("--probe-requests", type=int, default=240)
    parser.add_argument("--load", type=float, default=0.7, help="offered load, a fraction of measured capacity")
    parser.add_argument("--seconds", type=float, default=130, help="length of the load run")
    parser.add_argument("--kill-at", type=float, default=30, help="seconds into the load run")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work dir (nginx and driver logs)")
    parser.add_argument("--head-loss-seconds", type=float, default=90, help="then kill the head; watch this long")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    cluster = Cluster(nodes_cpus=(1, 1, 1))
    serve_args = [
        "--replicas", str(REPLICAS), "--model", "ce-fixture", "--replica-cpus", "0.5", "--warmup-seconds", "0",
        "--log-level", "warning",
    ]  # fmt: skip
    work_dir = Path(tempfile.mkdtemp(prefix="fleet-nodes-"))
    fleet = ClusterFleet(cluster, serve_args, work_dir, access_log=True)
    kill: dict[str, Any] = {}
    try:
        cluster.create()
        started = time.perf_counter()
        cluster.start_ray()
        ray_seconds = time.perf_counter() - started
        started = time.perf_counter()
        fleet.start()
        cold_start = time.perf_counter() - started  # `rerankd serve` until every node's proxy answers /ready
        placement_before = fleet.placement()
        victim = fleet.victim()
        print(f"Ray nodes up in {ray_seconds:.1f}s, fleet ready in {cold_start:.1f}s; placement {placement_before}")

        probe = make_requests(rng, [args.documents] * args.probe_requests, words=(10, 40))
        measured = asyncio.run(closed_loop(fleet.url, probe, args.probe_clients, max_seconds=120))
        capacity = len(measured.ok) / measured.wall_seconds
        rate = args.load * capacity
        print(f"capacity {capacity:.2f} requests/s ({len(measured.ok)}/{len(probe)} ok); offering {rate:.2f}/s")

        count = math.ceil(rate * args.seconds * 1.2) + 10
        times = poisson_times(rate, count, seed=1)
        requests = make_requests(rng, [args.documents] * count, words=(10, 40))
        log_start = time.time()
        t0 = time.perf_counter()

        def do_kill() -> None:
            kill.update(at=time.perf_counter() - t0, epoch=time.time(), node=victim.namespace)
            kill["pids"] = cluster.kill_node(victim)

        timer = threading.Timer(args.kill_at, do_kill)
        with Watch(fleet.url, t0, max_seconds=args.seconds + 120) as watch:
            timer.start()
            result = asyncio.run(open_loop(fleet.url, requests, times, max_seconds=args.seconds))
            timer.cancel()
        placement_after = fleet.placement()
        # The ingress logs each retry (a replica died under a request); the driver's log stream brings the line
        # here within about a second: the last one bounds when the router last had work on a dead replica.
        retry_epochs = fleet.log_times("replica died under request")
        load_average = os.getloadavg()
        access = [a for a in read_access_log(work_dir / "access.log") if a.at >= log_start]
        head_loss = lose_head(cluster, fleet, args.head_loss_seconds) if args.head_loss_seconds > 0 else {}
    finally:
        fleet.stop()
        cluster.close()
        if not args.keep_logs:
            shutil.rmtree(work_dir, ignore_errors=True)
    left = cluster.leftovers()

    killed_at = kill.get("at", math.nan)
    samples = watch.samples
    noticed = watch.first(killed_at, lambda s: s.running < REPLICAS)
    back = watch.first(noticed, lambda s: s.running >= REPLICAS) if noticed is not None else None
    retry_times = [t - kill.get("epoch", math.nan) for t in retry_epochs]
    last_retry = max((killed_at + t for t in retry_times if t >= -1), default=None)
    retry_source = "ingress log lines, as the driver received them"
    if last_retry is None and samples and samples[-1].retries > 0:  # no log lines found: the coarser /metrics
        last_retry, retry_source = watch.last_retry(killed_at), "/metrics samples"
    retries = samples[-1].retries - next((s.retries for s in samples if s.retries == s.retries), 0.0)
    victim_upstream = f"{victim.address}:{fleet.port}"
    rerankd = [a for a in access if a.uri.startswith("/v2/rerank")]
    nginx_retried = [a for a in rerankd if len(a.upstreams) > 1]
    to_victim = [a.at - kill.get("epoch", math.nan) for a in rerankd if victim_upstream in a.upstreams]
    last_nginx_try = max((t for t in to_victim if t >= 0), default=math.nan)
    end = max((o.sent_at for o in result.outcomes), default=0.0)
    back_at = back if back is not None else math.nan
    phases = {
        "before": window(result.outcomes, 0, killed_at),
        "during": window(result.outcomes, killed_at, back_at if back is not None else end + 1),
        "after": window(result.outcomes, back_at, end + 1) if back is not None else window([], 0, 0),
    }
    row = {
        "requests": len(result.outcomes),
        "ok": len(result.ok),
        "lost": sum(lost(o) for o in result.outcomes),
        "rejected_429": sum(o.status == 429 for o in result.outcomes),
        "nginx_retried": len(nginx_retried),
        "ingress_retried": int(retries),
        "lost_after_retry": int(samples[-1].lost) if samples else -1,
        "p99_before_s": phases["before"]["p99_s"],
        "p99_during_s": phases["during"]["p99_s"],
        "p99_after_s": phases["after"]["p99_s"],
        # No retry seen means the kill never reached the router: NaN, so the check below fails, not passes.
        "router_avoids_s": math.nan if last_retry is None else last_retry - killed_at,
        "noticed_s": (noticed - killed_at) if noticed is not None else math.nan,
        "capacity_back_s": back_at - killed_at,
    }
    back_limit = round(row["noticed_s"] + cold_start, 1)
    not_ready = [(s.at, s.ready) for s in samples if s.ready not in (200, 0)]  # answered, and not 200
    unanswered = [s.at for s in samples if s.ready == 0]  # no answer within the probe's 5 s
    checks = [
        check("accepted requests lost (5xx, no answer)", row["lost"], "<=", 0),
        check("router avoids the dead node's replicas after (s)", row["router_avoids_s"], "<=", AVOID_SECONDS),
        check("capacity back after (s), limit: noticed + cold start", row["capacity_back_s"], "<=", back_limit),
        check("/ready answered other than 200 through nginx (samples)", len(not_ready), "<=", 0),
        check("namespaces, veths, bridge, dirs left", len(left), "<=", 0),
    ]
    print(format_table([row], list(row)))
    columns = ["phase", "from_s", "to_s", "requests", "lost", "rejected_429", "p50_s", "p99_s"]
    print(format_table([{"phase": k, **v} for k, v in phases.items()], columns))
    print(format_table(checks, ["check", "measured", "limit", "ok"]))
    print(
        f"killed {kill.get('node')} ({len(kill.get('pids', []))} processes) at {killed_at:.1f}s; capacity "
        f"{capacity:.2f}/s, offered {rate:.2f}/s; cold start {cold_start:.1f}s; nginx last tried the dead node "
        f"{last_nginx_try:.1f}s after the kill; /ready unanswered (5 s) at {[round(t, 1) for t in unanswered]}; "
        f"load average {load_average}; placement after {placement_after}; left behind {left}"
    )
    save(
        "fleet_nodes",
        {
            "args": vars(args),
            "setup": {
                "nodes": [{"namespace": n.namespace, "address": n.address, "cpus": n.cpus} for n in cluster.nodes],
                "serve_args": serve_args,
                "ray_start_s": ray_seconds,
                "cold_start_s": cold_start,
                "placement_before": placement_before,
                "placement_after": placement_after,
            },
            "capacity_rps": capacity,
            "offered_rps": rate,
            "kill": {k: v for k, v in kill.items() if k != "epoch"},
            "result": row,
            "phases": phases,
            "checks": checks,
            "ingress_retry_times_after_kill_s": retry_times,
            "router_avoids_measured_from": retry_source,
            "load_average_1_5_15": load_average,
            "statuses": {str(k): v for k, v in sorted(Counter(o.status for o in result.outcomes).items())},
            "nginx_last_tried_dead_node_s": last_nginx_try,
            "not_ready_samples": not_ready,
            "ready_unanswered_5s_at": unanswered,
            "left_behind": left,
            "head_loss": head_loss,
            "samples": [[s.at, s.ready, s.running, s.retries, s.lost] for s in samples],
        },
    )
    plot(result.outcomes, samples, killed_at, noticed, back, nginx_retried, kill.get("epoch", math.nan))


def lose_head(cluster: Cluster, fleet: ClusterFleet, seconds: float) -> dict[str, Any]:
    """Kill every process of the head node, then once a second for `seconds`: a request through nginx, /ready
    straight to each surviving node's proxy, and how many processes each surviving node still has."""
    import httpx

    survivors = [n for n in cluster.nodes if not n.lost and not n.head]
    ingress_on_head = serve_roles(cluster.head)["ingress"] > 0
    killed = cluster.kill_node(cluster.head)
    started = time.perf_counter()
    body = {"query": "fast database", "documents": ["SQLite is a database", "a game", "fonts"]}
    timeline = []
    while time.perf_counter() - started < seconds:
        at = time.perf_counter() - started
        try:
            status = httpx.post(f"{fleet.url}/v2/rerank", json=body, timeout=5).status_code
        except httpx.HTTPError:
            status = 0
        ready = [_status(f"{fleet.node_url(n)}/ready") for n in survivors]
        processes = [len(namespace_pids(n.namespace)) for n in survivors]
        timeline.append([at, status, ready, processes])
        time.sleep(max(0.0, 1 - (time.perf_counter() - started - at)))
    answered = [t for t, status, _, _ in timeline if status == 200]
    gone = next((t for t, _, _, processes in timeline if not any(processes)), math.nan)
    remaining = {n.namespace: _names(namespace_pids(n.namespace)) for n in survivors}
    summary = {
        "ingress_on_head": ingress_on_head,
        "processes_killed": len(killed),
        "last_200_through_nginx_s": max(answered, default=math.nan),
        "requests_200": len(answered),
        "requests": len(timeline),
        "survivors_processes_gone_s": gone,
        "survivors_processes_at_end": remaining,
        "timeline": timeline,
    }
    print(
        f"head lost (ingress {'on' if ingress_on_head else 'not on'} it): {len(answered)}/{len(timeline)} probes "
        f"answered 200, the last {summary['last_200_through_nginx_s']:.1f}s after; survivors' processes all gone "
        f"after {gone:.1f}s; left at the end: {remaining}"
    )
    return summary


def _names(pids: list[int]) -> list[str]:
    import psutil

    names = []
    for pid in pids:
        try:
            names.append(" ".join(psutil.Process(pid).cmdline())[:80])
        except psutil.Error:
            continue
    return names


def _status(url: str) -> int:
    import httpx

    try:
        return httpx.get(url, timeout=3).status_code
    except httpx.HTTPError:
        return 0


def plot(outcomes, samples, killed_at, noticed, back, nginx_retried, kill_epoch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    ok = [o for o in outcomes if o.status == 200]
    bad = [o for o in outcomes if lost(o)]
    top.scatter([o.sent_at for o in ok], [o.latency for o in ok], s=5, label="answered 200")
    if bad:
        top.scatter([o.sent_at for o in bad], [o.latency for o in bad], s=20, c="red", label="lost")
    retried_at = [killed_at + (a.at - kill_epoch) for a in nginx_retried]
    if retried_at:
        top.scatter(retried_at, [0] * len(retried_at), marker="x", c="orange", label="retried by nginx (answered)")
    top.set_ylabel("latency (s)")
    top.legend(loc="upper right")
    bottom.step([s.at for s in samples], [s.running for s in samples], where="post", label="running replicas")
    bottom.set_ylabel("running model replicas")
    bottom.set_xlabel("seconds into the load run")
    for axis in (top, bottom):
        axis.axvline(killed_at, color="red", linestyle="--")
        for at, colour in ((noticed, "grey"), (back, "green")):
            if at is not None:
                axis.axvline(at, color=colour, linestyle=":")
    top.set_title("Worker node killed under load (red: kill, grey: noticed, green: replacement running)")
    fig.tight_layout()
    fig.savefig(plot_path("fleet_nodes"), dpi=110)


if __name__ == "__main__":
    main()
