"""Zero 5xx under generated and sustained traffic, against the real `rerankd serve` session server.

- Fuzz: bodies generated from the server's own OpenAPI document (schemathesis), narrowed only so that most of
  them are valid and reach scoring (a query with a word character, 1-8 documents, the default model).
- Soak: 32 clients for `RERANKD_SOAK_SECONDS` (60 by default) mixing every dialect, model and strategy, fusion,
  chunking, clipping, deadlines and documents longer than the window.
"""

from __future__ import annotations

import asyncio
import copy
import os
import random
import time
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

pytestmark = pytest.mark.slow  # a fuzz run and a soak against the subprocess server
SOAK_SECONDS = float(os.environ.get("RERANKD_SOAK_SECONDS", "60"))
SOAK_CLIENTS = 32
ENDPOINTS = {"/v2/rerank": "documents", "/v1/rerank": "documents", "/rerank": "texts"}


def narrowed(spec: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with each rerank body narrowed to mostly valid requests (any other field as is)."""
    spec = copy.deepcopy(spec)
    for path, documents_field in ENDPOINTS.items():
        reference = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        body = spec["components"]["schemas"][reference.rsplit("/", 1)[1]]
        body["properties"]["query"] = {"type": "string", "minLength": 1, "maxLength": 80, "pattern": r"\w"}
        body["properties"][documents_field] |= {"minItems": 1, "maxItems": 8}
        body["properties"].pop("model", None)  # an unknown model is a 404 before scoring
    return spec


def statuses_allowed(body: dict[str, Any]) -> set[int]:
    allowed = {200, 400, 404, 413, 422, 429}
    if body.get("timeout_ms") is not None:
        allowed.add(504)  # the client asked for a deadline
    return allowed


@pytest.fixture(scope="module")
def openapi(server: str) -> Any:
    return schemathesis.openapi.from_dict(narrowed(httpx.get(f"{server}/openapi.json").json()))


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_generated_bodies_never_get_a_5xx_and_mostly_reach_scoring(server: str, openapi, path: str) -> None:
    seen: Counter[int] = Counter()

    with httpx.Client(base_url=server, timeout=60) as client:

        @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(openapi[path]["POST"].as_strategy())
        def check(case: Any) -> None:
            response = client.post(path, json=case.body)
            seen[response.status_code] += 1
            assert response.status_code in statuses_allowed(case.body), (case.body, response.text[:300])

        check()
    assert seen[200] >= 0.3 * sum(seen.values()), seen  # the fuzz reaches the engine, not only validation


# -- soak -----------------------------------------------------------------------------------------------------------

WORDS = [
    "package",
    "library",
    "database",
    "server",
    "client",
    "tool",
    "data",
    "file",
    "network",
    "user",
    "archive",
    "compress",
    "sql",
]


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def soak_request(rng: random.Random) -> tuple[str, dict[str, Any]]:
    documents = [text(rng, rng.choice([3, 30, 120, 700])) for _ in range(rng.randint(1, 20))]
    extra: dict[str, Any] = rng.choice([
        {},
        {"strategy": "hybrid", "candidates": rng.randint(1, 10)},
        {"strategy": "bi-encoder", "candidates": 5},
        {"strategy": "auto", "latency_budget_ms": rng.choice([50, 500, 5000])},
        {"fusion": rng.choice(["zscore", "rrf"]), "fusion_weight": 0.3},
        {"max_chunks_per_doc": rng.randint(1, 4)},
        {"chunking": True, "truncate": False},
        {"timeout_ms": 30_000},
    ])  # fmt: skip
    query = text(rng, rng.randint(1, 12))
    model = rng.choice(["default", "ce-fixture"])
    path = rng.choice(list(ENDPOINTS))
    if path == "/rerank":
        return path, {"query": query, "texts": documents, "model": model, "truncate": rng.random() < 0.8, **extra}
    body = {"query": query, "documents": documents, "model": model, "top_n": rng.randint(1, 50), **extra}
    if path == "/v1/rerank" and rng.random() < 0.5:
        body |= {"documents": [{"text": d} for d in documents], "return_documents": True}
    elif path == "/v2/rerank" and rng.random() < 0.3:
        body["max_tokens_per_doc"] = rng.randint(1, 600)
    return path, body


def test_soak_every_dialect_and_strategy_without_a_5xx(server: str) -> None:
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    deadline = time.monotonic() + SOAK_SECONDS

    async def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=server, timeout=120) as client:
            while time.monotonic() < deadline:
                path, body = soak_request(rng)
                response = await client.post(path, json=body)
                statuses[response.status_code] += 1
                if response.status_code >= 500:
                    failures.append(f"{path} {response.status_code}: {response.text[:200]}")
                if response.status_code == 429:
                    await asyncio.sleep(float(response.headers["retry-after"]))

    async def main() -> None:
        await asyncio.gather(*(client_loop(seed) for seed in range(SOAK_CLIENTS)))

    asyncio.run(main())
    assert failures == []
    assert statuses[200] >= SOAK_CLIENTS // 2, statuses  # real work was done, not only refusals
    assert httpx.get(f"{server}/health").status_code == 200
