"""The deployment files: what the containers run is a valid rerankd command, the compose file reserves a GPU,
and the shipped nginx.conf balances over real rerankd servers, retries past a dead one and passes a 429 back
without marking upstreams down."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import REPO, free_port, wait_until

from rerankd.api import create_app
from rerankd.config import Settings

DEPLOY = REPO / "deploy"


def dockerfile_env_and_entrypoint(path: Path) -> tuple[dict[str, str], list[str]]:
    text = path.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(pair.split("=", 1) for pair in shlex.split(line[4:])))
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    return env, entrypoint


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_container_command_is_a_valid_rerankd_command(dockerfile: str, tmp_path: Path) -> None:
    env, entrypoint = dockerfile_env_and_entrypoint(DEPLOY / dockerfile)
    assert entrypoint[:2] == ["rerankd", "serve"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    service = "reranker-gpu" if dockerfile.endswith("cuda") else "reranker"
    command = [arg.replace("${RERANKD_MODEL:-", "").rstrip("}") for arg in compose["services"][service]["command"]]
    # `config` validates exactly what `serve` would be given: the image's environment plus the compose command.
    env = {**os.environ, **env, "HF_HUB_OFFLINE": "1", "RERANKD_CACHE_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "rerankd.cli", "config", *command], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert (settings["host"], settings["port"]) == ("0.0.0.0", 8080)
    assert settings["device"] == ("cuda" if dockerfile.endswith("cuda") else "auto")


def test_compose_reserves_a_gpu_and_balances_cpu_replicas() -> None:
    services = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())["services"]
    devices = services["reranker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["reranker"]["deploy"]["replicas"] >= 2
    assert services["loadbalancer"]["depends_on"]["reranker"]["condition"] == "service_healthy"


@pytest.mark.skipif(shutil.which("hadolint") is None and not (Path(sys.executable).parent / "hadolint").exists(),
                    reason="hadolint is not installed")  # fmt: skip
def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, *DEPLOY.glob("Dockerfile*")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def render_nginx_conf(upstreams: list[int], port: int, prefix: Path) -> Path:
    """The shipped nginx.conf with loopback upstreams, a loopback listen port and temp paths under `prefix`."""
    text = (DEPLOY / "nginx.conf").read_text()
    servers = "".join(f"        server 127.0.0.1:{p} max_fails=2 fail_timeout=5s;\n" for p in upstreams)
    text = re.sub(r"(?m)^ *server reranker:8080[^\n]*\n", servers, text)
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    temp = "".join(
        f"    {kind}_temp_path {prefix / kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace("http {\n", "http {\n" + temp, 1)
    path = prefix / "nginx.conf"
    path.write_text(text)
    return path


@pytest.mark.slow  # nginx in front of two servers
@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="nginx missing")
def test_nginx_balances_over_replicas_and_retries_past_a_dead_one(thread_server, tmp_path: Path) -> None:
    settings = Settings(model=["ce-fixture"], warmup_seconds=0)
    first, second = thread_server(create_app(settings)), thread_server(create_app(settings))
    with first, second:
        for srv in (first, second):
            wait_until(lambda srv=srv: httpx.get(f"{srv.url}/ready").status_code == 200, timeout=120)
        port = free_port()
        process = _start_nginx([first.port, second.port], port, tmp_path)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: _answers(url), timeout=30)
            body = {"query": "database", "documents": ["SQLite database", "a game", "menu editor"]}
            for _ in range(12):
                response = httpx.post(f"{url}/v2/rerank", json=body, timeout=60)
                assert response.status_code == 200
                assert sorted(r["index"] for r in response.json()["results"]) == [0, 1, 2]
            for srv in (first, second):  # least_conn spread the load: each replica answered some
                metrics = httpx.get(f"{srv.url}/metrics").text
                assert re.search(r'rerankd_requests_total\{route="/v2/rerank",status="200"\} [1-9]', metrics)
            first.__exit__(None, None, None)
            codes = [httpx.post(f"{url}/v2/rerank", json=body, timeout=60).status_code for _ in range(6)]
            assert codes == [200] * 6
        finally:
            process.terminate()
            process.wait(timeout=30)


class _Stub(BaseHTTPRequestHandler):
    """An upstream that answers every POST with the server's `status` (429 with Retry-After: a full replica)."""

    def do_GET(self) -> None:
        self._answer(200)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.posts += 1  # type: ignore[attr-defined]
        self._answer(self.server.status)  # type: ignore[attr-defined]

    def _answer(self, status: int) -> None:
        body = b'{"error": {"type": "overloaded"}}' if status == 429 else b"{}"
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "3")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="nginx missing")
def test_nginx_passes_a_429_back_and_keeps_the_upstreams_up(tmp_path: Path) -> None:
    """A 429 goes back to the client with its Retry-After, is not retried on another upstream, and does not count
    against the upstream (`max_fails`): if nginx retried 429s it would count each as a failed try, and after a
    few of them answer 502 "no live upstreams" to everything for `fail_timeout`, even once the replicas have room
    (measured behind Ray Serve's node proxies: bench/results/fleet_nodes.shipped-nginx.json)."""
    stubs = [ThreadingHTTPServer(("127.0.0.1", 0), _Stub) for _ in range(2)]
    for stub in stubs:
        stub.posts, stub.status = 0, 429  # type: ignore[attr-defined]
        threading.Thread(target=stub.serve_forever, daemon=True).start()
    port = free_port()
    process = _start_nginx([stub.server_address[1] for stub in stubs], port, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(url), timeout=30)
        body = {"query": "q", "documents": ["a", "b"]}
        answers = [httpx.post(f"{url}/v2/rerank", json=body, timeout=10) for _ in range(8)]
        assert [a.status_code for a in answers] == [429] * 8
        assert all(a.headers.get("retry-after") == "3" for a in answers)
        assert sum(stub.posts for stub in stubs) == 8  # type: ignore[attr-defined]  # each tried once
        for stub in stubs:  # room again, within fail_timeout (5 s) of the 429s: served at once
            stub.status = 200  # type: ignore[attr-defined]
        assert [httpx.post(f"{url}/v2/rerank", json=body, timeout=10).status_code for _ in range(4)] == [200] * 4
    finally:
        process.terminate()
        process.wait(timeout=30)
        for stub in stubs:
            stub.shutdown()
            stub.server_close()


def _start_nginx(upstreams: list[int], port: int, prefix: Path) -> subprocess.Popen:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = render_nginx_conf(upstreams, port, prefix)
    directives = f"daemon off; pid {prefix / 'nginx.pid'}; error_log {prefix / 'error.log'};"
    return subprocess.Popen([nginx, "-p", str(prefix), "-c", str(conf), "-g", directives])


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
