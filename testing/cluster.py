"""A multi-node Ray cluster on one machine, for tests and benchmarks: each node in a network namespace of its own.

The namespaces hang off a Linux bridge that this module creates in the calling (root) namespace, with private
addresses (`10.77.N.0/24`, N from the process id: the bridge is `.1`, node i is `.2+i`). Node 0 is the head (`ray start
--head`), the others join it with `ray start --address`. Nothing outside this machine can reach the nodes: the
only way in is the bridge, whose subnet no other host routes here. A node is "lost" by killing every process in
its namespace (`ip netns pids`), which is what a crashed machine looks like to its peers (its address stays, its
ports answer with resets).

`close()` removes everything it made (processes, namespaces and their veths, the bridge, temp dirs) and is safe to
call twice; `leftovers()` says what of it is still there. Needs root and `ip` (iproute2). Never calls `ray stop`,
which would end every Ray process on the machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from testing.processes import stop

GCS_PORT = 6379
NGINX_CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx.conf"


class ClusterError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise ClusterError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def can_make_namespaces() -> str | None:
    """None where this process can build the cluster, else why not."""
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


def namespace_pids(name: str) -> list[int]:
    """Every process in the named network namespace (`ip netns pids`)."""
    result = _ip("netns", "pids", name, check=False)
    return sorted(int(p) for p in result.stdout.split() if p.isdigit() and int(p) != os.getpid())


@dataclass
class Node:
    index: int
    namespace: str
    address: str
    veth: str  # the host end, on the bridge
    cpus: float
    temp_dir: str
    lost: bool = False

    @property
    def head(self) -> bool:
        return self.index == 0


@dataclass
class Cluster:
    """`nodes` Ray nodes (node 0 the head) with `cpus[i]` CPUs each, on `subnet`.0/24. Use as a context manager,
    or call `create()`, `start_ray()` and, in a `finally`, `close()`."""

    nodes_cpus: Sequence[float] = (1, 1, 1)
    subnet: str = field(default_factory=lambda: f"10.77.{os.getpid() % 250 + 1}")  # one per run: runs may overlap
    tag: str = field(default_factory=lambda: f"rr{os.getpid() % 100000}")
    object_store_bytes: int = 100 * 1024 * 1024
    nodes: list[Node] = field(default_factory=list)
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    _bridge_made: bool = False

    @property
    def bridge(self) -> str:
        return f"{self.tag}br"

    @property
    def bridge_address(self) -> str:
        return f"{self.subnet}.1"

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def ray_address(self) -> str:
        return f"{self.head.address}:{GCS_PORT}"

    def env(self) -> dict[str, str]:
        """The environment every Ray process of this cluster (and its clients) runs with: token auth, its token."""
        return {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_DEDUP_LOGS": "0",  # every replica log line reaches the driver at once (ClusterFleet.log_times)
            "HF_HUB_OFFLINE": "1",
        }

    # -- network ----------------------------------------------------------------------------------------------

    def create(self) -> Cluster:
        """The bridge, one namespace per node with a veth into the bridge; loopback up everywhere."""
        why = can_make_namespaces()
        if why:
            raise ClusterError(why)
        _ip("link", "add", self.bridge, "type", "bridge")
        self._bridge_made = True
        _ip("addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for index, cpus in enumerate(self.nodes_cpus):
            namespace, veth = f"{self.tag}n{index}", f"{self.tag}v{index}"
            node = Node(index, namespace, f"{self.subnet}.{2 + index}", veth, cpus, "")
            _ip("netns", "add", namespace)
            self.nodes.append(node)  # from here on close() removes it
            node.temp_dir = tempfile.mkdtemp(prefix=f"{self.tag}n{index}-", dir="/tmp")  # short: socket paths
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", namespace, "addr", "add", f"{node.address}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        return self

    def command(self, node: Node, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", node.namespace, *argv]

    def popen(self, node: Node, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start `argv` inside the node's namespace, with the cluster's environment."""
        return subprocess.Popen(self.command(node, argv), env=kwargs.pop("env", self.env()), **kwargs)

    # -- Ray ----------------------------------------------------------------------------------------------------

    def start_ray(self, timeout: float = 180) -> None:
        """`ray start --head` on node 0, then `ray start --address` on the others; waits until all are alive."""
        ray = str(Path(sys.executable).with_name("ray"))
        for node in self.nodes:
            common = [
                "--node-ip-address", node.address, "--num-cpus", f"{node.cpus:g}", "--disable-usage-stats",
                "--object-store-memory", str(self.object_store_bytes),
            ]  # fmt: skip
            if node.head:
                argv = [ray, "start", "--head", "--port", str(GCS_PORT), "--include-dashboard", "false",
                        "--temp-dir", node.temp_dir, *common]  # fmt: skip
            else:
                argv = [ray, "start", "--address", self.ray_address, *common]
            started = subprocess.run(
                self.command(node, argv), capture_output=True, text=True, timeout=timeout, env=self.env()
            )
            if started.returncode != 0:
                raise ClusterError(
                    f"ray start on {node.namespace} failed:\n{started.stdout[-1500:]}{started.stderr[-1500:]}"
                )
        self.wait_nodes(len(self.nodes), timeout=timeout)

    def alive_nodes(self) -> list[str]:
        """Addresses of the nodes Ray's GCS counts alive (asked from the head's namespace)."""
        script = (
            f"import ray; ray.init(address={self.ray_address!r}, logging_level='ERROR'); "
            "print(' '.join(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']))"
        )
        out = subprocess.run(
            self.command(self.head, [sys.executable, "-c", script]),
            capture_output=True, text=True, timeout=120, env=self.env(),
        )  # fmt: skip
        if out.returncode != 0:
            raise ClusterError(f"cannot list Ray nodes: {out.stderr[-1500:]}")
        return sorted(out.stdout.strip().splitlines()[-1].split()) if out.stdout.strip() else []

    def wait_nodes(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            alive = self.alive_nodes()
            if len(alive) >= count:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"only {alive} of {count} Ray nodes alive after {timeout:.0f}s")
            time.sleep(1)

    # -- faults and teardown ------------------------------------------------------------------------------------

    def kill_node(self, node: Node) -> list[int]:
        """SIGKILL every process in the node's namespace (a crashed machine); returns the pids killed."""
        killed: list[int] = []
        for _ in range(5):  # a dying process may still fork; repeat until the namespace is empty
            pids = namespace_pids(node.namespace)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)
        node.lost = True
        return killed

    def node_of_address(self, address: str) -> Node:
        return next(n for n in self.nodes if n.address == address)

    def close(self) -> None:
        """Kill every process in every namespace, delete the namespaces (their veths go with them), the bridge and
        the temp dirs. Idempotent."""
        for node in self.nodes:
            self.kill_node(node)
        for node in self.nodes:
            _ip("netns", "del", node.namespace, check=False)
            _ip("link", "del", node.veth, check=False)  # normally gone with its peer's namespace
            if node.temp_dir:
                shutil.rmtree(node.temp_dir, ignore_errors=True)
        if self._bridge_made:
            _ip("link", "del", self.bridge, check=False)
            self._bridge_made = False

    @staticmethod
    def netns_list() -> list[str]:
        """The names `ip netns list` shows."""
        return [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]

    def leftovers(self) -> list[str]:
        """What this cluster made that still exists (empty after a good `close()`)."""
        found = []
        namespaces = _ip("netns", "list", check=False).stdout
        links = _ip("-o", "link", "show", check=False).stdout
        for node in self.nodes:
            if re.search(rf"(?m)^{re.escape(node.namespace)}\b", namespaces):
                found.append(f"namespace {node.namespace}")
            if re.search(rf"\b{re.escape(node.veth)}[@:]", links):
                found.append(f"veth {node.veth}")
            if node.temp_dir and os.path.exists(node.temp_dir):
                found.append(f"dir {node.temp_dir}")
        if re.search(rf"\b{re.escape(self.bridge)}[@:]", links):
            found.append(f"bridge {self.bridge}")
        return found

    def __enter__(self) -> Cluster:
        try:
            return self.create()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


ACCESS_LOG_FORMAT = "$msec $status $request_time $upstream_addr $upstream_status $request_uri"


def render_nginx_conf(upstreams: Sequence[str], listen: str, prefix: Path, access_log: bool = False) -> Path:
    """The shipped deploy/nginx.conf with `upstreams` (host:port) as its servers, listening on `listen`
    (host:port), temp paths under `prefix`; with `access_log`, every request logged to `prefix`/access.log as
    `ACCESS_LOG_FORMAT` (`$upstream_addr` lists every upstream tried, so nginx's retries show). The same file
    serves single-process replicas and Serve's node proxies (docs/fleet.md, "From one machine to many")."""
    text = NGINX_CONF.read_text()
    servers = "".join(f"        server {u} max_fails=2 fail_timeout=5s;\n" for u in upstreams)
    text, n = re.subn(r"(?m)^ *server reranker:8080[^\n]*\n", servers, text)
    if n != 1 or "listen 8080;" not in text:
        raise ClusterError("deploy/nginx.conf changed shape: no `server reranker:8080` / `listen 8080;` line")
    text = text.replace("listen 8080;", f"listen {listen};")
    temp = "".join(
        f"    {kind}_temp_path {prefix / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    if access_log:
        temp += f'    log_format tries "{ACCESS_LOG_FORMAT}";\n    access_log {prefix / "access.log"} tries;\n'
    else:
        temp += "    access_log off;\n"
    text = text.replace("http {\n", "http {\n" + temp, 1)
    path = prefix / "nginx.conf"
    path.write_text(text)
    return path


@contextlib.contextmanager
def nginx(upstreams: Sequence[str], listen: str, prefix: Path, access_log: bool = False):
    """A real nginx (the shipped config shape) in the calling namespace, in front of `upstreams`; yields its
    process, stopped afterwards."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(binary):
        raise ClusterError("nginx is not installed")
    conf = render_nginx_conf(upstreams, listen, prefix, access_log)
    directives = f"daemon off; pid {prefix / 'nginx.pid'}; error_log {prefix / 'error.log'};"
    process = subprocess.Popen([binary, "-p", str(prefix), "-c", str(conf), "-g", directives])
    try:
        yield process
    finally:
        stop(process)


SERVE_TITLES = {  # what Ray calls each Serve process (`ray::<title>`), by role
    "model": "ServeReplica:rerankd:Model",
    "ingress": "ServeReplica:rerankd:Ingress",
    "proxy": "ProxyActor",
    "controller": "ServeController",
}


def serve_roles(node: Node) -> dict[str, int]:
    """How many of each Serve process (model replicas, ingress, proxy, controller) run in the node's namespace."""
    import psutil

    counts = dict.fromkeys(SERVE_TITLES, 0)
    for pid in namespace_pids(node.namespace):
        try:
            cmdline = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        for role, title in SERVE_TITLES.items():
            if title in cmdline:
                counts[role] += 1
    return counts


def _get_status(url: str, timeout: float = 3) -> int:
    import httpx

    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError:
        return 0


@dataclass
class ClusterFleet:
    """`rerankd serve --ray-address` on a `Cluster` (run in the head's namespace, as an operator runs it on a
    head machine), Serve's proxy on every node at `port` (`--host 0.0.0.0`: inside a namespace that is its loopback
    and its bridge address), and a real nginx on `listen` in the calling namespace in front of the node proxies."""

    cluster: Cluster
    serve_args: Sequence[str]
    work_dir: Path
    port: int = 8000
    listen: str = "127.0.0.1:0"
    access_log: bool = False
    process: subprocess.Popen | None = None
    _nginx: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def node_url(self, node: Node) -> str:
        return f"http://{node.address}:{self.port}"

    def start(self, timeout: float = 240) -> ClusterFleet:
        command = [
            sys.executable, "-m", "rerankd.cli", "serve", "--ray-address", self.cluster.ray_address,
            "--host", "0.0.0.0", "--port", str(self.port), *self.serve_args,
        ]  # fmt: skip
        self.process = self.cluster.popen(
            self.cluster.head, command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        threading.Thread(target=self._copy_log, args=(self.process,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not all(_get_status(f"{self.node_url(n)}/ready") == 200 for n in self.cluster.nodes):
            if self.process.poll() is not None:
                raise ClusterError(f"rerankd serve exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise ClusterError(f"the fleet's node proxies were not all ready after {timeout:.0f}s")
            time.sleep(0.5)
        if self.listen.endswith(":0"):
            import socket

            with socket.socket() as sock:
                sock.bind((self.listen.rsplit(":", 1)[0], 0))
                self.listen = f"{self.listen.rsplit(':', 1)[0]}:{sock.getsockname()[1]}"
        upstreams = [f"{n.address}:{self.port}" for n in self.cluster.nodes]
        self._nginx.enter_context(nginx(upstreams, self.listen, self.work_dir, self.access_log))
        deadline = time.monotonic() + 30
        while _get_status(f"{self.url}/ready") != 200:
            if time.monotonic() > deadline:
                raise ClusterError("nginx did not answer /ready within 30 s")
            time.sleep(0.2)
        return self

    def _copy_log(self, process: subprocess.Popen) -> None:
        """The driver's output (its own, and what Ray streams from every replica's stdout/stderr) into serve.log,
        each line prefixed with the epoch time it arrived here."""
        with (self.work_dir / "serve.log").open("w") as log:
            for line in process.stdout:
                log.write(f"{time.time():.3f} {line}")
                log.flush()

    def log_times(self, pattern: str) -> list[float]:
        """Arrival times (epoch) of the driver's log lines matching `pattern`: for a replica's message, an upper
        bound on when it was logged (Ray's log monitor forwards worker output within about a second)."""
        found = []
        for line in self.log().splitlines():
            stamp, _, text = line.partition(" ")
            if re.search(pattern, text):
                with contextlib.suppress(ValueError):
                    found.append(float(stamp))
        return found

    def log(self) -> str:
        path = self.work_dir / "serve.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def placement(self) -> dict[str, dict[str, int]]:
        """Serve's processes by node namespace."""
        return {node.namespace: serve_roles(node) for node in self.cluster.nodes}

    def victim(self, ingress: bool | None = None) -> Node:
        """The worker node to lose: one that runs a model replica and, with `ingress` True, an ingress replica too;
        False, none; None (default), either, preferring one with an ingress replica (the harder loss)."""
        workers = [(node, serve_roles(node)) for node in self.cluster.nodes[1:]]
        candidates = [(n, r) for n, r in workers if r["model"] and (ingress is None or bool(r["ingress"]) == ingress)]
        candidates.sort(key=lambda pair: -pair[1]["ingress"])
        if not candidates:
            raise ClusterError(f"no worker node with a model replica (ingress: {ingress}): {self.placement()}")
        return candidates[0][0]

    def stop(self) -> None:
        """nginx down, and the `rerankd serve` driver killed: the cluster goes next (`Cluster.close`), so there is
        nothing to hand back gracefully, and a graceful `serve.delete` would wait for replicas to drain."""
        self._nginx.close()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def fleet_metrics(url: str, names: Sequence[str], timeout: float = 3) -> dict[str, float]:
    """Sums of the named Prometheus samples on `url`/metrics (a name with `{...}` must match those labels too)."""
    import httpx

    totals = dict.fromkeys(names, 0.0)
    text = httpx.get(f"{url}/metrics", timeout=timeout).text
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        for name in names:
            base, _, labels = name.partition("{")
            if series == base or (series.startswith(base + "{") and labels.rstrip("}") in series):
                totals[name] += float(value)
    return totals


WATCHED = (
    'rerankd_fleet_replicas{state="RUNNING"}',
    "rerankd_fleet_retries_total",
    "rerankd_fleet_lost_total",
)


@dataclass
class Sample:
    at: float  # seconds since the watch began
    ready: int  # /ready status through nginx (0: no answer)
    running: float  # model replicas RUNNING, as the ingress reports them
    retries: float
    lost: float


class Watch:
    """Samples the fleet through `url` (nginx) every `period` s in a thread: /ready, running replicas, retries,
    requests lost after a retry. Bounded by `max_seconds`."""

    def __init__(self, url: str, t0: float, period: float = 0.25, max_seconds: float = 600) -> None:
        self.url, self.t0, self.period, self.max_seconds = url, t0, period, max_seconds
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import httpx

        while not self._stop.is_set() and time.perf_counter() - self.t0 < self.max_seconds:
            at = time.perf_counter() - self.t0
            ready = _get_status(f"{self.url}/ready", timeout=5)
            try:
                values = fleet_metrics(self.url, WATCHED, timeout=5)
                running, retries, lost = (values[name] for name in WATCHED)
            except httpx.HTTPError:
                running = retries = lost = float("nan")
            self.samples.append(Sample(at, ready, running, retries, lost))
            self._stop.wait(self.period)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def first(self, after: float, predicate) -> float | None:
        """When a sample at or after `after` first met `predicate` (None if none did)."""
        return next((s.at for s in self.samples if s.at >= after and predicate(s)), None)

    def last_retry(self, after: float) -> float | None:
        """When the retry counter last grew at or after `after`: the last request that a replica failed under."""
        last, previous = None, None
        for s in self.samples:
            if previous is not None and s.retries > previous and s.at >= after:
                last = s.at
            if s.retries == s.retries:  # not NaN
                previous = s.retries
        return last


@dataclass
class Access:
    at: float  # epoch seconds when nginx finished the request
    status: int
    upstreams: list[str]  # every upstream tried, in order (more than one: nginx retried)
    upstream_statuses: list[str]
    uri: str


def read_access_log(path: Path) -> list[Access]:
    """The entries of an access log written with `ACCESS_LOG_FORMAT`."""
    entries = []
    for line in path.read_text().splitlines() if path.exists() else []:
        # `$upstream_addr` and `$upstream_status` separate the tries with ", ": join them first.
        fields = line.replace(", ", ",").split(" ")
        if len(fields) != 6:
            continue
        msec, status, _, addresses, statuses, uri = fields
        entries.append(Access(float(msec), int(status), addresses.split(","), statuses.split(","), uri))
    return entries
