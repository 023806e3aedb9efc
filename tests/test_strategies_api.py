"""Strategy, fusion and pre-filter fields through the real server: every document comes back once, the cut
ones after the scored ones in pre-filter order; meta and headers say what ran; bad values are clear 4xx."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from conftest import SERVER_MAX_DOCUMENTS

from rerankd.first_stage import bm25_scores
from rerankd.pipeline.types import MAX_CHUNKS_PER_DOC

QUERY = "embedded sql database library"
DOCUMENTS = [
    "A real-time strategy game of ancient warfare.",
    "SQLite is a C library that implements an embedded SQL database engine.",
    "Tools to edit GNOME menus.",
    "PostgreSQL is an object-relational SQL database server.",
    "An alarm clock for the panel.",
    "Berkeley DB is an embedded key-value database library.",
    "A library of sound effects.",
    "Fonts for the terminal.",
]


def post(server: str, path: str, body: dict) -> httpx.Response:
    response = httpx.post(f"{server}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response


def v2(server: str, **fields: object) -> httpx.Response:
    return post(server, "/v2/rerank", {"model": "ce-fixture", "query": QUERY, "documents": DOCUMENTS, **fields})


def plain_scores(server: str) -> dict[int, float]:
    return {r["index"]: r["relevance_score"] for r in v2(server).json()["results"]}


def test_plain_requests_are_direct_and_say_so(server: str) -> None:
    response = v2(server)
    meta = response.json()["meta"]["rerankd"]
    assert (meta["strategy"], meta["requested_strategy"], meta["candidates"]) == ("direct", "auto", len(DOCUMENTS))
    assert response.headers["x-rerankd-strategy"].startswith("direct; candidates=8; documents=8")
    assert all("cut_by_prefilter" not in r and "model_score" not in r for r in response.json()["results"])


def test_hybrid_returns_every_document_once_cut_ones_in_bm25_order(server: str) -> None:
    response = v2(server, strategy="hybrid", candidates=3)
    results = response.json()["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    bm25 = bm25_scores(QUERY, DOCUMENTS)
    prefilter = sorted(range(len(DOCUMENTS)), key=lambda i: (-bm25[i], i))
    assert {r["index"] for r in results[:3]} == set(prefilter[:3])
    assert [r["index"] for r in results[3:]] == prefilter[3:]
    assert all(r.get("cut_by_prefilter") for r in results[3:]) and not any("cut_by_prefilter" in r for r in results[:3])
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    plain = plain_scores(server)
    assert all(r["relevance_score"] == pytest.approx(plain[r["index"]], abs=1e-6) for r in results[:3])
    meta = response.json()["meta"]["rerankd"]
    assert (meta["strategy"], meta["candidates"], meta["prefilter"]) == ("hybrid", 3, "bm25")
    assert "hybrid; candidates=3; documents=8" in response.headers["x-rerankd-strategy"]


def test_top_n_after_the_prefilter(server: str) -> None:
    results = v2(server, strategy="hybrid", candidates=3, top_n=5).json()["results"]
    assert len(results) == 5 and len({r["index"] for r in results}) == 5


def test_client_first_stage_scores_drive_the_prefilter(server: str) -> None:
    first = [float(i) for i in range(len(DOCUMENTS))]  # the client prefers later documents
    response = v2(server, strategy="hybrid", candidates=2, first_stage_scores=first)
    results = response.json()["results"]
    assert {r["index"] for r in results[:2]} == {6, 7}
    assert [r["index"] for r in results[2:]] == [5, 4, 3, 2, 1, 0]
    assert response.json()["meta"]["rerankd"]["prefilter"] == "first_stage_scores"


def test_bi_encoder_prefilter_and_its_cache(server: str) -> None:
    def hits() -> float:
        for line in httpx.get(f"{server}/metrics", timeout=10).text.splitlines():
            if line.startswith("rerankd_embedding_cache_hits_total"):
                return float(line.split()[-1])
        return 0.0

    first = v2(server, strategy="bi-encoder", candidates=4).json()
    before = hits()
    again = v2(server, strategy="bi-encoder", candidates=4).json()
    assert hits() - before == len(DOCUMENTS)  # every document embedding came from the cache
    assert first["results"] == again["results"]
    assert sorted(r["index"] for r in again["results"]) == list(range(len(DOCUMENTS)))
    assert again["meta"]["rerankd"]["prefilter"].startswith("embeddings:")
    assert sum(bool(r.get("cut_by_prefilter")) for r in again["results"]) == 4


def test_fusion_weights_at_the_ends_follow_one_score(server: str) -> None:
    first = [0.0, 5.0, 1.0, 4.0, 2.0, 3.0, 7.0, 6.0]
    by_first = sorted(range(len(first)), key=lambda i: -first[i])
    for method in ("zscore", "rrf"):
        response = v2(server, fusion=method, fusion_weight=1.0, first_stage_scores=first)
        results = response.json()["results"]
        assert [r["index"] for r in results] == by_first
        plain = plain_scores(server)
        assert all(r["model_score"] == pytest.approx(plain[r["index"]], abs=1e-6) for r in results)
        assert [r["first_stage_score"] for r in results] == [first[i] for i in by_first]
        meta = response.json()["meta"]["rerankd"]["fusion"]
        assert (meta["method"], meta["weight"], meta["fused"]) == (method, 1.0, ["model", "first_stage_scores"])
        assert response.headers["x-rerankd-fusion"] == f"{method}; weight=1.0; first_stage=first_stage_scores"
    model_only = v2(server, fusion="zscore", fusion_weight=0.0, first_stage_scores=first).json()["results"]
    plain = plain_scores(server)
    assert [r["index"] for r in model_only] == sorted(plain, key=lambda i: (-plain[i], i))


def test_fusion_by_hand_with_bm25(server: str) -> None:
    raw = post(server, "/rerank", {"model": "ce-fixture", "query": QUERY, "texts": DOCUMENTS, "raw_scores": True})
    logits = np.zeros(len(DOCUMENTS))
    for item in raw.json():
        logits[item["index"]] = item["score"]
    bm25 = bm25_scores(QUERY, DOCUMENTS).astype(np.float64)
    z = 0.7 * (logits - logits.mean()) / logits.std() + 0.3 * (bm25 - bm25.mean()) / bm25.std()
    answer = post(
        server,
        "/rerank",
        {"model": "ce-fixture", "query": QUERY, "texts": DOCUMENTS, "fusion": "zscore", "fusion_weight": 0.3},
    )
    assert [item["index"] for item in answer.json()] == sorted(range(len(z)), key=lambda i: (-z[i], i))
    assert [item["score"] for item in answer.json()] == pytest.approx(sorted(z, reverse=True), abs=1e-5)
    assert answer.headers["x-rerankd-fusion"] == "zscore; weight=0.3; first_stage=bm25"


def test_auto_follows_the_budget(server: str) -> None:
    documents = [f"document number {i} about databases and games" for i in range(50)]
    roomy = post(server, "/v2/rerank", {"model": "ce-fixture", "query": QUERY, "documents": documents,
                                        "latency_budget_ms": 600_000}).json()  # fmt: skip
    assert roomy["meta"]["rerankd"]["strategy"] == "direct"
    tight = post(server, "/v2/rerank", {"model": "ce-fixture", "query": QUERY, "documents": documents,
                                        "latency_budget_ms": 1}).json()  # fmt: skip
    meta = tight["meta"]["rerankd"]
    assert meta["strategy"] == "hybrid" and meta["candidates"] <= 10 and meta["estimate_ms"] > 1
    assert sorted(r["index"] for r in tight["results"]) == list(range(50))


@pytest.mark.parametrize(
    ("path", "extra", "status", "words"),
    [
        ("/v2/rerank", {"strategy": "fast"}, 422, ["strategy", "auto", "bi-encoder"]),
        ("/rerank", {"fusion": "max"}, 422, ["fusion", "zscore", "rrf"]),
        ("/v2/rerank", {"latency_budget_ms": 0}, 400, ["latency_budget_ms", "above 0"]),
        ("/v2/rerank", {"candidates": 0}, 400, ["candidates", "at least 1"]),
        ("/v1/rerank", {"fusion_weight": 1.5}, 400, ["fusion_weight", "between 0 and 1", "1.5"]),
        ("/v2/rerank", {"first_stage_scores": [1.0]}, 400, ["first_stage_scores", "one score per document", "(2)"]),
        ("/v2/rerank", {"max_chunks_per_doc": 0}, 400, ["max_chunks_per_doc", str(MAX_CHUNKS_PER_DOC)]),
        ("/v1/rerank", {"max_chunks_per_doc": MAX_CHUNKS_PER_DOC + 1}, 400, ["max_chunks_per_doc", "between 1"]),
        ("/rerank", {"candidates": -3}, 400, ["candidates", "-3"]),
    ],
)
def test_bad_strategy_fields_are_clear_4xx(server: str, path: str, extra: dict, status: int, words: list[str]) -> None:
    body = {"model": "ce-fixture", "query": "database", **extra}
    body["texts" if path == "/rerank" else "documents"] = ["SQLite is a database.", "A game."]
    response = httpx.post(f"{server}{path}", json=body, timeout=30)
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    assert all(word in message for word in words), message


@pytest.mark.parametrize("strategy", ["hybrid", "bi-encoder", "auto"])
def test_document_limit_applies_before_a_prefilter(server: str, strategy: str) -> None:
    """A pre-filter would cut the documents to a few candidates; the server's limit still counts them all."""
    documents = ["SQLite is a database."] * (SERVER_MAX_DOCUMENTS + 1)
    body = {"model": "ce-fixture", "query": "database", "documents": documents, "strategy": strategy, "candidates": 2}
    response = httpx.post(f"{server}/v2/rerank", json=body, timeout=30)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "max_documents" in message and str(SERVER_MAX_DOCUMENTS) in message, message


def test_non_finite_first_stage_score_is_rejected(server: str) -> None:
    body = '{"model": "ce-fixture", "query": "q", "documents": ["a", "b"], "first_stage_scores": [1.0, NaN]}'
    response = httpx.post(f"{server}/v2/rerank", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code in (400, 422), response.text
    assert "first_stage_scores[1]" in response.json()["error"]["message"]


def test_openapi_documents_the_new_fields(server: str) -> None:
    schemas = httpx.get(f"{server}/openapi.json", timeout=10).json()["components"]["schemas"]
    for name in ("CohereV2Request", "CohereV1Request", "TeiRequest"):
        properties = schemas[name]["properties"]
        for field in ("strategy", "latency_budget_ms", "candidates", "fusion", "fusion_weight", "first_stage_scores"):
            assert properties[field].get("description"), (name, field)
        assert "chunking" in properties and "max_chunks_per_doc" in properties
