"""Readiness during start-up, authentication, overload, and loading failures, on real loopback ports."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest
from conftest import serve_once, wait_until

from rerankd.api import create_app
from rerankd.config import Settings


def test_ready_is_503_while_loading_and_health_stays_200(thread_server) -> None:
    # A long warm-up keeps the server in its loading phase long enough to watch it from outside.
    app = create_app(Settings(model=["ce-fixture"], warmup_seconds=3))
    with thread_server(app) as srv:
        first = httpx.get(f"{srv.url}/ready", timeout=5)
        assert first.status_code == 503
        assert first.json()["status"] == "loading"
        assert first.headers["retry-after"]
        early = httpx.post(f"{srv.url}/rerank", json={"query": "q", "texts": ["a"]}, timeout=5)
        assert early.status_code == 503
        assert early.json()["error"]["type"] == "not_ready"
        assert early.headers["retry-after"]
        statuses = []

        def ready() -> bool:
            statuses.append(httpx.get(f"{srv.url}/health", timeout=5).status_code)
            return httpx.get(f"{srv.url}/ready", timeout=5).status_code == 200

        wait_until(ready, timeout=120, interval=0.1)
        assert set(statuses) == {200}
        assert httpx.post(f"{srv.url}/rerank", json={"query": "q", "texts": ["a"]}, timeout=30).status_code == 200


def test_api_keys_are_enforced(thread_server) -> None:
    app = create_app(Settings(model=["ce-fixture"], warmup_seconds=0, api_keys=["s3cret"]))
    with thread_server(app) as srv:
        wait_until(lambda: httpx.get(f"{srv.url}/ready").status_code == 200, timeout=120)
        body = {"query": "q", "documents": ["a", "b"]}
        missing = httpx.post(f"{srv.url}/v2/rerank", json=body, timeout=30)
        assert missing.status_code == 401
        assert "Authorization" in missing.json()["error"]["message"]
        wrong = httpx.post(f"{srv.url}/v2/rerank", json=body, headers={"Authorization": "Bearer nope"}, timeout=30)
        assert wrong.status_code == 401
        good = httpx.post(f"{srv.url}/v2/rerank", json=body, headers={"Authorization": "Bearer s3cret"}, timeout=30)
        assert good.status_code == 200
        assert httpx.get(f"{srv.url}/health").status_code == 200  # operations stay open


def test_overload_answers_429_with_retry_after_and_loses_nothing_accepted(thread_server) -> None:
    # A queue of at most 64 pairs (and no limit in time): concurrent 50-document requests overflow it.
    settings = Settings(
        model=["ce-fixture"], warmup_seconds=0, max_queued_pairs=64, max_batch_tokens=512, max_queue_seconds=0
    )
    app = create_app(settings)
    with thread_server(app) as srv:
        wait_until(lambda: httpx.get(f"{srv.url}/ready").status_code == 200, timeout=120)
        body = {"query": "q", "documents": [f"document number {i} " * 20 for i in range(50)]}

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=120) as client:
                return await asyncio.gather(*(client.post("/v2/rerank", json=body) for _ in range(6)))

        responses = asyncio.run(burst())
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 429} and 429 in codes and 200 in codes
        for response in responses:
            if response.status_code == 429:
                assert int(response.headers["retry-after"]) >= 1
                assert "max_queued_pairs" in response.json()["error"]["message"]
            else:
                assert sorted(r["index"] for r in response.json()["results"]) == list(range(50))


@pytest.mark.slow  # `rerankd serve` in a subprocess
def test_unknown_model_fails_at_start_with_a_clear_message(tmp_path) -> None:
    result = serve_once(["--model", "no-org/no-such-model"], tmp_path)
    assert result.returncode == 2
    assert "no-org/no-such-model" in result.stderr
    assert "hub" in result.stderr


@pytest.mark.slow  # `rerankd serve` in a subprocess
def test_folder_without_a_model_is_rejected(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rerankd.cli", "rerank", "q", "-", "--model", str(tmp_path)],
        input="doc\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "config.json" in result.stderr
