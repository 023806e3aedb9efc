"""Shared fixtures: the ce-fixture model, a real `rerankd serve` process, and in-process servers on real ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from rerankd.config import Settings
from rerankd.models.fixture import build_ce_fixture
from rerankd.pipeline.service import LocalService
from rerankd.pipeline.types import RerankRequest, RerankResult
from testing.processes import stop

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEBIAN_DATA = SHARED / "data" / "debian-descriptions"
TRAINED_CE = SHARED / "models" / "debian-minilm-ce"

# A small mixed set shared by the score-fidelity tests: on- and off-topic documents and one longer than the
# model window (every backend, and sentence-transformers, truncate it the same way).
QUERY = "how do I store data in a lightweight database"
DOCUMENTS = [
    "SQLite is a C library that implements an SQL database engine in a single file.",
    "A real-time strategy game of ancient warfare.",
    "PostgreSQL is a powerful object-relational database server.",
    "Tools to edit GNOME menus.",
    "An alarm clock for the panel. " * 120,
    "Lightweight key-value store with a small footprint, embedded in applications.",
]

# The session server's limits are small so that limit tests stay cheap.
SERVER_MAX_DOCUMENTS = 100
SERVER_MAX_REQUEST_BYTES = 200_000

# Fixtures that start `rerankd serve` as a subprocess: every test using one is `slow` (`make test-fast` skips
# them); modules that start Ray or soak mark themselves with `pytestmark = pytest.mark.slow`.
SUBPROCESS_SERVER_FIXTURES = frozenset({"server", "hostile_server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SUBPROCESS_SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


def local_rerank(request: RerankRequest, model: str = "ce-fixture") -> RerankResult:
    """The answer of one in-process service (no server, no Ray): the reference a fleet's answers must match."""
    service = LocalService(Settings(model=[model], warmup_seconds=0))
    service.load()
    try:
        return asyncio.run(service.rerank(request))
    finally:
        service.close()


def is_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="session")
def ce_fixture_path() -> Path:
    return build_ce_fixture()


@contextlib.contextmanager
def served(arguments: list[str], log: Path, timeout: float = 180) -> Iterator[tuple[str, subprocess.Popen]]:
    """`rerankd serve ARGUMENTS` on a free loopback port until it is ready: (base URL, process); stopped after."""
    port = free_port()
    command = [sys.executable, "-m", "rerankd.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *arguments]
    with log.open("w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: is_ready(url) or process.poll() is not None, timeout=timeout, interval=0.2)
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        yield url, process
    finally:
        stop(process)


def serve_once(arguments: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    """`rerankd serve ARGUMENTS --port 0` offline in a bare environment (its own HOME), for start-up failures."""
    return subprocess.run(
        [sys.executable, "-m", "rerankd.cli", "serve", *arguments, "--port", "0"],
        capture_output=True, text=True, timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(home)},
    )  # fmt: skip


@pytest.fixture(scope="session")
def server(ce_fixture_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`rerankd serve` as a user starts it: the packaged default first, then the ce-fixture.

    The engine is pinned to onnx fp32 (within 1e-7 of sentence-transformers here), so the score tests stay exact
    whatever `auto` picks on the machine; tests/test_backends.py checks each backend/precision on its own.
    """
    log = tmp_path_factory.mktemp("server") / "server.log"
    arguments = [
        "--model", "default", "--model", "ce-fixture",
        "--max-documents", str(SERVER_MAX_DOCUMENTS), "--max-request-bytes", str(SERVER_MAX_REQUEST_BYTES),
        "--warmup-seconds", "0", "--backend", "onnx", "--precision", "fp32",
    ]  # fmt: skip
    with served(arguments, log) as (url, _):
        yield url


class ThreadServer:
    """A uvicorn server for an app built in this process, on a real loopback port."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def thread_server():
    return ThreadServer
