"""`rerankd serve --ray-address` joins a Ray cluster that `ray start` runs, and leaves it as it found it.

The cluster runs with a private temp dir inside a loopback-only network namespace of its own; afterwards every
process in that namespace is stopped (Ray renames its processes, so they are found by namespace, not by name),
and no other Ray on the machine is touched. Without namespaces (not root) the test is skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import free_port, is_ready, local_rerank, wait_until

from rerankd.pipeline.types import RerankRequest
from testing.netns import loopback_only
from testing.processes import namespace_pids

pytestmark = pytest.mark.slow  # starts a Ray cluster and `rerankd serve`
RAY = str(Path(sys.executable).with_name("ray"))
QUERY = "fast embedded SQL database"
DOCUMENTS = ["A turn-based strategy game.", "SQLite is a small, fast SQL database engine.", "Latin fonts."]


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """A one-node Ray cluster started by `ray start --head` on 127.0.0.1: (address, environment to join it)."""
    temp_dir = tempfile.mkdtemp(prefix="rr-ray-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with loopback_only() as isolated:
        if not isolated:
            pytest.skip("needs a network namespace of its own (root) to run a Ray cluster it can stop safely")
        namespace = os.stat("/proc/thread-self/ns/net").st_ino
        address = f"127.0.0.1:{free_port()}"
        command = [
            RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", address.split(":")[1],
            "--num-cpus", "2", "--include-dashboard", "false", "--temp-dir", temp_dir, "--disable-usage-stats",
        ]  # fmt: skip
        started = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
        try:
            if started.returncode != 0:
                pytest.fail(f"`ray start` failed:\n{started.stdout[-1500:]}{started.stderr[-1500:]}")
            token = Path.home() / ".ray" / "auth_token"
            if "RAY_AUTH_MODE" not in env and token.exists():  # a cluster with token authentication
                env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
            yield address, env
        finally:
            for pid in namespace_pids(namespace):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(temp_dir, ignore_errors=True)


def test_serve_joins_a_running_cluster_and_leaves_it_running(cluster, ce_fixture_path: Path, tmp_path: Path) -> None:
    address, env = cluster
    port, log = free_port(), tmp_path / "join.log"
    command = [
        sys.executable, "-m", "rerankd.cli", "serve", "--ray-address", address, "--replicas", "1",
        "--model", "ce-fixture", "--replica-cpus", "0.5", "--warmup-seconds", "0", "--port", str(port),
        "--log-level", "warning",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:  # in the cluster's network namespace: the fixture's block is still open
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(lambda: is_ready(url) or process.poll() is not None, timeout=240, interval=0.5)
            assert process.poll() is None, log.read_text()[-3000:]
            answer = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS}, timeout=60)
            assert answer.status_code == 200, answer.text
            got = {r["index"]: r["relevance_score"] for r in answer.json()["results"]}
            want = {r.index: r.score for r in local_rerank(RerankRequest(QUERY, DOCUMENTS)).results}
            assert got == pytest.approx(want, abs=1e-4)  # the joined cluster runs the same model
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=90)
        assert process.returncode == 0, log.read_text()[-3000:]
        # rerankd took its application away and left the cluster up: another client can still join it.
        script = f"import ray; ray.init(address={address!r}); from ray import serve; "
        script += "print(sorted(serve.status().applications))"
        status = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
        assert status.returncode == 0, status.stderr[-2000:]
        assert "rerankd" not in status.stdout.strip().splitlines()[-1]
