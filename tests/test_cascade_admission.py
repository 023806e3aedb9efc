"""Admission counts a cascade's first model: it scores every document, on its own queue, before the LLM scores K.

Served over HTTP with real fixture models: the tiny Qwen3-shaped LLM reranker (tests/test_golden_llm.py) behind
the ce-fixture cross-encoder (MiniLM-L6 shape). The limit is tiny, so any work admitted ahead on a queue is over it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from conftest import ThreadServer, wait_until
from test_golden_llm import build_tiny_llm

from rerankd.api import create_app
from rerankd.config import Settings
from rerankd.models.presets import CE_FIXTURE_ID
from rerankd.pipeline.service import LocalService

QUERY = "which package stores data in a small embedded database"
DOCUMENTS = [
    f"package {i} stores data in a small embedded database file with tools to edit it " * 3 for i in range(200)
]
CASCADE = {"query": QUERY, "documents": DOCUMENTS, "strategy": "hybrid", "candidates": 10}


@pytest.fixture(scope="module")
def cascade() -> Iterator[tuple[str, LocalService, str]]:
    """(URL, the service, the LLM's model name): the LLM and the ce-fixture, served on torch fp32."""
    llm = str(build_tiny_llm("qwen3"))
    settings = Settings(
        model=[llm, "ce-fixture"], backend="torch", precision="fp32", device="cpu", warmup_seconds=0,
        max_queue_seconds=0.01, embedding_model="", score_cache_mb=0,
    )  # fmt: skip
    service = LocalService(settings)
    with ThreadServer(create_app(settings, service)) as srv:
        wait_until(lambda: httpx.get(f"{srv.url}/ready", timeout=5).status_code == 200, timeout=300, interval=0.2)
        yield srv.url, service, llm


def _post_in_background(url: str, body: dict) -> tuple[threading.Thread, list[httpx.Response]]:
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/v2/rerank", json=body, timeout=300)))
    thread.start()
    return thread, answers


def test_an_admitted_cascade_holds_its_first_models_queue(cascade: tuple[str, LocalService, str]) -> None:
    url, service, llm = cascade
    thread, answers = _post_in_background(url, {**CASCADE, "model": llm, "first_stage_model": "ce-fixture"})
    held: list[float] = []
    while thread.is_alive():
        held.append(service.admission.queued_seconds(CE_FIXTURE_ID))
        time.sleep(0.001)
    thread.join()
    assert answers[0].status_code == 200, answers[0].text
    assert "prefilter=model:rerankd/ce-fixture" in answers[0].headers["X-Rerankd-Strategy"]
    assert max(held) > 0  # the first model's work over all 200 documents was on its queue
    assert service.admission.queued_seconds(CE_FIXTURE_ID) == 0.0


def test_a_cascade_is_turned_away_while_its_first_models_queue_is_full(cascade: tuple[str, LocalService, str]) -> None:
    url, service, llm = cascade
    # A large direct request on the first model, admitted and running: that queue is over the limit, the LLM's idle.
    thread, answers = _post_in_background(url, {"model": "ce-fixture", "query": QUERY, "documents": DOCUMENTS})
    wait_until(lambda: service.admission.queued_seconds(CE_FIXTURE_ID) > 0, timeout=30, interval=0.001)
    refused = httpx.post(
        f"{url}/v2/rerank", json={**CASCADE, "model": llm, "first_stage_model": "ce-fixture"}, timeout=120
    )
    bm25 = httpx.post(f"{url}/v2/rerank", json={**CASCADE, "model": llm}, timeout=60)  # no first model: admitted
    thread.join()
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["message"].startswith(f"first_stage_model {CE_FIXTURE_ID}: expected wait")
    assert bm25.status_code == 200 and "prefilter=bm25" in bm25.headers["X-Rerankd-Strategy"]
    assert answers[0].status_code == 200  # the request ahead is answered
