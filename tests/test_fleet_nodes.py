"""A fleet on a real three-node Ray cluster, and the loss of a worker node under load.

Each Ray node runs in a network namespace of its own, joined to the others by a bridge with private addresses
(`testing.cluster`): the head (`ray start --head`) and two workers (`ray start --address`). `rerankd serve
--ray-address` runs on the head as an operator would start it, with 3 model replicas (at least one per node), an
ingress replica and a Serve proxy on every node (the default `ingress_replicas`); a real nginx with the shipped
deploy/nginx.conf balances over the three proxies. Load comes from the root namespace, through nginx and
straight to the head's proxy. Then every process of one worker node is killed (SIGKILL, the whole namespace)
mid-load.

The node killed is a worker that holds a model replica *and* an ingress replica: its proxy's requests are retried
by nginx, its model replica's by the other ingress replicas. Each proxy hands requests to the ingress replica on
its own node, so no request entering elsewhere is inside the lost ingress replica (with fewer ingress replicas than
nodes such requests got Serve's 500: docs/fleet.md, "From one machine to many").

Needs root (namespaces), `ip` and nginx; skipped without them. Everything it made is removed afterwards, checked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from testing.cluster import (
    Cluster,
    ClusterFleet,
    Watch,
    can_make_namespaces,
    namespace_pids,
    read_access_log,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # three Ray nodes, a fleet, nginx: under 5 minutes

AVOID_SECONDS = 5.0  # the router stops sending to a dead node's replicas within this
REPLICAS = 3
INGRESS_REPLICAS = 3  # the default `ingress_replicas`: one per node
CLIENTS = 4
WORDS = ["database", "library", "server", "network", "storage", "kernel", "driver", "python", "cache", "queue"]


def _why_not() -> str | None:
    import shutil

    return can_make_namespaces() or (
        None if shutil.which("nginx") or Path("/usr/sbin/nginx").exists() else "nginx is not installed"
    )


@pytest.fixture(scope="module")
def fleet(ce_fixture_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterFleet]:
    why = _why_not()
    if why:
        pytest.skip(f"a multi-node cluster on one machine: {why}")
    cluster = Cluster(nodes_cpus=(1, 1, 1))
    serve_args = [
        "--replicas", str(REPLICAS), "--model", "ce-fixture", "--replica-cpus", "0.5", "--warmup-seconds", "0",
        "--max-documents", "100", "--log-level", "warning",
    ]  # fmt: skip
    running = ClusterFleet(cluster, serve_args, tmp_path_factory.mktemp("nodes"), access_log=True)
    try:
        cluster.create()
        cluster.start_ray()
        running.start()
        yield running
    finally:
        running.stop()
        cluster.close()
        left = cluster.leftovers()
        namespaces = Cluster.netns_list()
        assert not left, f"left behind: {left}"
        assert not [n.namespace for n in cluster.nodes if n.namespace in namespaces], namespaces


@dataclass
class Outcome:
    sent_at: float
    latency: float
    status: int  # 0: no HTTP answer
    detail: str = ""  # the body of an answer other than 200 (its start)
    url: str = ""


def closed_loop(clients: list[tuple[str, int]], t0: float, stop: threading.Event, max_requests: int) -> list[Outcome]:
    """A thread per (url, documents per request) in `clients`, each sending requests back to back until `stop`,
    `max_requests` in all."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def client(seed: int, url: str, size: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            i = 0
            while not stop.is_set():
                with lock:
                    if len(outcomes) >= max_requests:
                        return
                i += 1
                documents = [" ".join(WORDS[(seed + i + k + j) % len(WORDS)] for j in range(20)) for k in range(size)]
                sent = time.perf_counter()
                detail = ""
                try:
                    body = {"query": "fast database", "documents": documents}
                    answer = http.post("/v2/rerank", json=body)
                    status = answer.status_code
                    if status != 200:
                        detail = answer.text[:200]
                except httpx.HTTPError as exc:
                    status, detail = 0, repr(exc)[:200]
                with lock:
                    outcomes.append(Outcome(sent - t0, time.perf_counter() - sent, status, detail, url))

    threads = [threading.Thread(target=client, args=(n, *c), daemon=True) for n, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


def test_replicas_and_proxies_spread_over_every_node(fleet: ClusterFleet) -> None:
    placement = fleet.placement()
    assert sum(roles["model"] for roles in placement.values()) == REPLICAS, placement
    # The ingress replicas are on different nodes (`max_replicas_per_node`): no node's loss takes them all.
    assert sum(roles["ingress"] for roles in placement.values()) == INGRESS_REPLICAS, placement
    assert max(roles["ingress"] for roles in placement.values()) == 1, placement
    for node in fleet.cluster.nodes:
        roles = placement[node.namespace]
        assert roles["proxy"] == 1, placement  # any node can take client traffic
        if not node.head:
            assert roles["model"] >= 1, placement
        body = {"query": "database", "documents": ["SQLite database", "a game", "fonts"]}
        answer = httpx.post(f"{fleet.node_url(node)}/v2/rerank", json=body, timeout=60)
        assert answer.status_code == 200, (node.namespace, answer.text)


def test_losing_a_worker_node_with_an_ingress_replica_under_load_loses_no_request(fleet: ClusterFleet) -> None:
    victim = fleet.victim(ingress=True)
    before = fleet.placement()
    t0 = time.perf_counter()
    stop = threading.Event()
    result: list[Outcome] = []
    # Half the clients go through nginx, half straight to the head's proxy with larger requests: many requests are
    # inside the head's ingress replica at the kill, and with a remote ingress they would be the ones lost.
    head = next(node for node in fleet.cluster.nodes if node.head)
    clients = [(fleet.url, 8)] * (CLIENTS // 2) + [(fleet.node_url(head), 40)] * (CLIENTS - CLIENTS // 2)
    load = threading.Thread(target=lambda: result.extend(closed_loop(clients, t0, stop, 4000)), daemon=True)
    with Watch(fleet.url, t0, max_seconds=200) as watch:
        load.start()
        time.sleep(8)  # steady load first
        killed_epoch = time.time()
        killed = fleet.cluster.kill_node(victim)
        killed_at = time.perf_counter() - t0
        # Ray notices, Serve starts replacements on the surviving nodes; then a few more seconds of load.
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            noticed = watch.first(killed_at, lambda s: s.running < REPLICAS)
            if noticed is not None and watch.first(noticed, lambda s: s.running >= REPLICAS) is not None:
                break
            time.sleep(0.5)
        # Each ingress replica reports Serve's replica count as it last saw it, so the watch can read a stale
        # count; the processes on the surviving nodes are the truth.
        while time.monotonic() < deadline:
            if sum(roles["model"] for roles in fleet.placement().values()) >= REPLICAS:
                break
            time.sleep(1)
        time.sleep(3)
        stop.set()
        load.join(timeout=120)
    after = fleet.placement()
    report = (
        f"killed {victim.namespace} ({len(killed)} processes) at {killed_at:.1f}s; before {before}; after {after}; "
        f"{len(result)} requests"
    )
    print(report)

    assert killed and not namespace_pids(victim.namespace), report
    assert len(result) > 100, report
    # A response whose headers had reached nginx when the node died cannot be retried but by the client (nginx's
    # error log: "upstream prematurely closed connection while reading upstream"; the client sees a cut body):
    # measured once in 2 runs, 1 of 1,039 (docs/fleet.md). Only such cuts at the kill itself, at most one per
    # client, are tolerated; everything else counts as lost.
    cut = [
        o
        for o in result
        if o.status == 0
        and "without sending complete message body" in o.detail
        and abs(o.sent_at + o.latency - killed_at) <= 2
    ][:CLIENTS]
    print(f"responses cut mid-way at the kill: {len(cut)}", [(round(o.sent_at - killed_at, 2), o.detail) for o in cut])
    direct = [o for o in result if o.url == fleet.node_url(head)]
    at_kill = [o for o in direct if o.sent_at <= killed_at <= o.sent_at + o.latency]
    print(f"{len(direct)} requests straight to the head's proxy, {len(at_kill)} in flight at the kill")
    lost = [o for o in result if o.status != 200 and o not in cut]
    failed = [
        (round(a.at - killed_epoch, 1), a.status, a.upstreams, a.upstream_statuses)
        for a in read_access_log(fleet.work_dir / "access.log")
        if a.status != 200 and a.uri.startswith("/v2/rerank")
    ]
    assert not lost, (
        f"{len(lost)} lost: {[(round(o.sent_at - killed_at, 1), o.status, o.detail) for o in lost]}; "
        f"nginx: {failed}; {report}"
    )
    assert any(o.sent_at > killed_at + 5 for o in result), report  # the load went on well after the loss
    noticed = watch.first(killed_at, lambda s: s.running < REPLICAS)
    assert noticed is not None, f"the ingress never reported fewer running replicas; {report}"
    recovered = watch.first(noticed, lambda s: s.running >= REPLICAS)
    assert recovered is not None, f"no replacement replica within the run; {report}"
    # Each retry is a request a dead replica failed; the ingress logs it (the driver gets the line within ~1 s).
    retries = [t - killed_epoch for t in fleet.log_times("replica died under request")]
    last_retry = max(retries, default=None)
    assert last_retry is None or last_retry <= AVOID_SECONDS, (retries, report)
    assert watch.samples[-1].lost == 0, report  # one ingress replica's count (each has its own /metrics)
    # /ready through nginx never said anything but 200 (a sample may go unanswered for the probe's 5 s when the
    # ingress is slow right after the loss: on these shared cores, once seen for ~10 s in the benchmark).
    assert all(s.ready in (200, 0) for s in watch.samples), [(s.at, s.ready) for s in watch.samples if s.ready != 200]
    readiness = [(round(s.at, 1), s.ready) for s in watch.samples]
    assert sum(s.ready == 200 for s in watch.samples) >= len(watch.samples) - 4, readiness
    # The replacements run on the surviving nodes, and every surviving node still has its proxy.
    assert after[victim.namespace] == dict.fromkeys(after[victim.namespace], 0), after
    assert sum(roles["model"] for roles in after.values()) == REPLICAS, after
    # Every surviving node keeps its own ingress replica; the lost one waits, pending, for a node to join.
    assert all(after[n.namespace]["ingress"] == 1 for n in fleet.cluster.nodes if n is not victim), after
    accesses = read_access_log(fleet.work_dir / "access.log")
    retried_by_nginx = [a for a in accesses if len(a.upstreams) > 1]
    print("nginx retries (s after the kill, upstream statuses):", [
        (round(a.at - killed_epoch, 1), a.upstream_statuses) for a in retried_by_nginx
    ])  # fmt: skip
    print(
        f"nginx retried {len(retried_by_nginx)} requests on another node; "
        f"Ray/ingress noticed after {noticed - killed_at:.1f}s, replacement running after {recovered - killed_at:.1f}s,"
        f" retries logged at {[round(t, 1) for t in retries]}s after the kill,"
        f" retries {watch.samples[-1].retries:.0f}"
    )
