"""The fleet on a real local Ray, inside a loopback-only network namespace where this machine allows one.

`rerankd serve --replicas 2` runs as a user starts it (ce-fixture replicas); an autoscaled fleet of cost-model
replicas (sleep per token, no CPU) runs in-process. Nothing is skipped: Ray is a dependency, so a fleet that
cannot start fails.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import free_port, is_ready, local_rerank, wait_until

from rerankd.config import Settings
from rerankd.pipeline.types import RerankRequest
from testing.costmodel import SimulatedReplica
from testing.netns import loopback_only
from testing.processes import replica_pids

pytestmark = pytest.mark.slow  # starts Ray
QUERY = "fast embedded SQL database"
DOCUMENTS = [
    "SQLite is a C library that implements a small, fast, self-contained SQL database engine.",
    "A turn-based strategy game set in space.",
    "PostgreSQL is an object-relational database server.",
    "Fonts for the Latin, Greek and Cyrillic scripts.",
]


def metric(url: str, name: str, labels: str = "") -> float:
    """Sum of the samples of `name` (whose label set contains `labels`) on /metrics."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{" if labels or "{" in line.split(" ")[0] else name + " ") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def fleet(ce_fixture_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """`rerankd serve --replicas 2 --model ce-fixture`: (base URL, server pid)."""
    log = tmp_path_factory.mktemp("fleet") / "fleet.log"
    with loopback_only() as isolated:
        if not isolated:
            print("fleet tests: no network namespace here; Ray runs on the host's loopback")
        port = free_port()
        command = [
            sys.executable, "-m", "rerankd.cli", "serve", "--replicas", "2", "--model", "ce-fixture",
            "--replica-cpus", "0.5", "--warmup-seconds", "0", "--port", str(port), "--max-documents", "100",
            "--replica-stall-seconds", "30", "--log-level", "warning",
        ]  # fmt: skip
        with log.open("w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: is_ready(url) or process.poll() is not None, timeout=240, interval=0.5)
            if process.poll() is not None:
                pytest.fail(f"fleet exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            yield url, process.pid
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)
    assert process.returncode in (0, -signal.SIGKILL), log.read_text()[-3000:]


def test_fleet_serves_every_dialect_with_the_same_scores_as_one_process(fleet) -> None:
    url, _ = fleet
    tei = httpx.post(f"{url}/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}, timeout=60)
    assert tei.status_code == 200, tei.text
    expected = local_rerank(RerankRequest(QUERY, DOCUMENTS, raw_scores=True))
    assert [r["index"] for r in tei.json()] == [r.index for r in expected.results]
    for got, want in zip(tei.json(), expected.results, strict=True):
        assert got["score"] == pytest.approx(want.score, abs=1e-4)

    v2 = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS, "top_n": 2}, timeout=60)
    assert v2.status_code == 200 and len(v2.json()["results"]) == 2
    v1 = httpx.post(
        f"{url}/v1/rerank",
        json={"model": "ce-fixture", "query": QUERY, "documents": [{"text": d} for d in DOCUMENTS],
              "return_documents": True},
        timeout=60,
    )  # fmt: skip
    assert v1.status_code == 200 and v1.json()["usage"]["total_tokens"] > 0
    assert v1.json()["results"][0]["document"]["text"] in DOCUMENTS


def test_fleet_errors_keep_their_status_and_message(fleet) -> None:
    url, _ = fleet
    empty = httpx.post(f"{url}/v2/rerank", json={"query": " ", "documents": ["a"]}, timeout=30)
    assert empty.status_code == 400 and "query" in empty.json()["error"]["message"]
    unknown = httpx.post(f"{url}/v2/rerank", json={"model": "nope", "query": "q", "documents": ["a"]}, timeout=30)
    assert unknown.status_code == 404 and "ce-fixture" in unknown.json()["error"]["message"]
    many = httpx.post(f"{url}/v2/rerank", json={"query": "q", "documents": ["a"] * 101}, timeout=30)
    assert many.status_code == 400 and "max_documents" in many.json()["error"]["message"]


def test_fleet_is_ready_and_reports_replicas_queues_and_latency(fleet) -> None:
    url, _ = fleet
    assert httpx.get(f"{url}/ready", timeout=10).json() == {"status": "ready"}
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    models = httpx.get(f"{url}/v1/models", timeout=10).json()["data"]
    assert "ce-fixture" in models[0]["aliases"]
    httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS}, timeout=60)
    wait_until(lambda: metric(url, "rerankd_fleet_replicas", 'state="RUNNING"') == 2, timeout=60)
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for name in (
        "rerankd_fleet_outstanding_tokens",
        "rerankd_fleet_replica_queue_tokens{",
        "rerankd_fleet_replica_inflight_tokens{",
        "rerankd_fleet_replica_request_duration_seconds_bucket{",
        "rerankd_requests_total{",
    ):
        assert name in text, name


def test_killing_a_replica_under_load_loses_no_request(fleet) -> None:
    """SIGKILL one replica process mid-run: the ingress retries its requests on the other; Ray replaces it."""
    url, server_pid = fleet
    victims = replica_pids(server_pid)
    assert len(victims) == 2, victims
    body = {"query": QUERY, "documents": DOCUMENTS * 2}
    killed_at: list[float] = []

    async def load() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            codes: list[int] = []
            todo = list(range(48))  # bounded: 48 requests, 6 at a time

            async def worker() -> None:
                while todo:
                    todo.pop()
                    codes.append((await client.post("/v2/rerank", json=body)).status_code)
                    if len(codes) == 8 and not killed_at:
                        os.kill(victims[0], signal.SIGKILL)
                        killed_at.append(time.monotonic())

            await asyncio.gather(*(worker() for _ in range(6)))
            return codes

    codes = asyncio.run(load())
    assert killed_at, "the load ended before the kill"
    assert codes == [200] * 48
    assert metric(url, "rerankd_fleet_lost_total") == 0
    # Ray notices the death, then starts a replacement, which loads and serves.
    wait_until(lambda: victims[0] not in replica_pids(server_pid), timeout=60)
    wait_until(lambda: len(replica_pids(server_pid)) == 2, timeout=120, interval=0.5)
    wait_until(lambda: metric(url, "rerankd_fleet_replicas", 'state="RUNNING"') == 2, timeout=180, interval=0.5)
    assert httpx.post(f"{url}/v2/rerank", json=body, timeout=60).status_code == 200


def test_a_burst_scales_a_cost_model_fleet_up_within_the_delay_and_not_down_before_the_quiet_period() -> None:
    from testing.simfleet import simulated_fleet

    upscale, window = 2.0, 2.0  # the policy's delay, and the metrics window it reads (ray_app: max(2, delay))
    with loopback_only():
        settings = Settings(
            autoscale="1:2", autoscale_upscale_seconds=upscale, autoscale_downscale_seconds=600,
            replica_cpus=0.5, port=free_port(), log_level="warning",
        )  # fmt: skip
        fleet = simulated_fleet(settings, SimulatedReplica(tokens_per_second=3000, cold_start_seconds=1), num_cpus=2)
        try:
            fleet.connect()  # Ray is a dependency: failing to start it fails the test
            fleet.deploy(settings)
            wait_until(lambda: is_ready(fleet.url), timeout=120)
            assert fleet.replica_states().get("RUNNING") == 1
            body = {"query": "q", "documents": ["one two three four five six seven eight"] * 40}  # ~0.2 s each
            scaled_after: list[float] = []

            async def burst() -> list[int]:
                started = time.monotonic()
                async with httpx.AsyncClient(base_url=fleet.url, timeout=60) as client:

                    async def worker() -> list[int]:
                        codes = []
                        while time.monotonic() - started < 40 and not scaled_after:  # bounded
                            codes.append((await client.post("/v2/rerank", json=body)).status_code)
                        return codes

                    async def watch() -> None:
                        while time.monotonic() - started < 40 and not scaled_after:
                            states = await asyncio.to_thread(fleet.replica_states)
                            if sum(states.values()) >= 2:
                                scaled_after.append(time.monotonic() - started)
                            await asyncio.sleep(0.2)

                    results = await asyncio.gather(watch(), *(worker() for _ in range(8)))
                    return [code for codes in results[1:] for code in codes]

            codes = asyncio.run(burst())
            assert set(codes) == {200}
            assert scaled_after, "no scale-up within 40 s of saturating load"
            # Saturation shows in the replica's metrics within a window; the need must then last `upscale` seconds.
            # The rest is Ray's control loop and a loaded machine.
            assert scaled_after[0] <= upscale + window + 8
            wait_until(lambda: fleet.replica_states().get("RUNNING") == 2, timeout=60)
            # Load stopped: the quiet period (600 s) has not passed, so nothing may scale down.
            quiet_until = time.monotonic() + 8
            while time.monotonic() < quiet_until:
                assert fleet.replica_states().get("RUNNING") == 2
                time.sleep(0.5)
        finally:
            fleet.stop()
