"""The deployment files: what the containers run is a valid rerankd command, the compose file reserves a GPU,
and the shipped nginx.conf balances over real rerankd servers and retries past a dead one."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
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
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    settings = Settings(model=["ce-fixture"], warmup_seconds=0)
    first, second = thread_server(create_app(settings)), thread_server(create_app(settings))
    with first, second:
        for srv in (first, second):
            wait_until(lambda srv=srv: httpx.get(f"{srv.url}/ready").status_code == 200, timeout=120)
        port = free_port()
        conf = render_nginx_conf([first.port, second.port], port, tmp_path)
        directives = f"daemon off; pid {tmp_path / 'nginx.pid'}; error_log {tmp_path / 'error.log'};"
        process = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf), "-g", directives])
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


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
