"""Every dialect returns sentence-transformers' own scores, ranked, through a real server."""

from __future__ import annotations

from pathlib import Path

import cohere
import httpx
import numpy as np
import pytest
from conftest import DOCUMENTS, QUERY
from sentence_transformers import CrossEncoder, SentenceTransformer

from rerankd.models.presets import packaged_default_path


@pytest.fixture(scope="module")
def bi_reference() -> np.ndarray:
    model = SentenceTransformer(str(packaged_default_path()), device="cpu")
    embeddings = model.encode([QUERY, *DOCUMENTS], convert_to_numpy=True)
    normed = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    return normed[1:] @ normed[0]


@pytest.fixture(scope="module")
def ce_reference(ce_fixture_path: Path) -> dict[str, np.ndarray]:
    model = CrossEncoder(str(ce_fixture_path), device="cpu")
    pairs = [(QUERY, doc) for doc in DOCUMENTS]
    return {"sigmoid": model.predict(pairs), "raw": model.predict(pairs, activation_fn=lambda x: x)}


def expected_order(scores: np.ndarray) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def test_cohere_v2_sdk_matches_bi_encoder_reference(server: str, bi_reference: np.ndarray) -> None:
    client = cohere.ClientV2(api_key="unused", base_url=server)
    response = client.rerank(model="all-MiniLM-L6-v2", query=QUERY, documents=DOCUMENTS)
    assert [r.index for r in response.results] == expected_order(bi_reference)
    for result in response.results:
        assert result.relevance_score == pytest.approx(bi_reference[result.index], abs=1e-5)
    assert response.id


def test_cohere_v2_sdk_matches_cross_encoder_reference(server: str, ce_reference: dict[str, np.ndarray]) -> None:
    client = cohere.ClientV2(api_key="unused", base_url=server)
    response = client.rerank(model="ce-fixture", query=QUERY, documents=DOCUMENTS, top_n=3)
    assert [r.index for r in response.results] == expected_order(ce_reference["sigmoid"])[:3]
    for result in response.results:
        assert result.relevance_score == pytest.approx(ce_reference["sigmoid"][result.index], abs=1e-5)


def test_cohere_v1_sdk_returns_documents(server: str, ce_reference: dict[str, np.ndarray]) -> None:
    client = cohere.Client(api_key="unused", base_url=server)
    response = client.rerank(model="ce-fixture", query=QUERY, documents=DOCUMENTS, return_documents=True, top_n=2)
    best = expected_order(ce_reference["sigmoid"])[:2]
    assert [r.index for r in response.results] == best
    assert [r.document.text for r in response.results] == [DOCUMENTS[i] for i in best]


def test_jina_shape_has_usage_and_documents(server: str, ce_reference: dict[str, np.ndarray]) -> None:
    body = {"model": "ce-fixture", "query": QUERY, "documents": [{"text": d} for d in DOCUMENTS], "top_n": 4}
    body["return_documents"] = True
    answer = httpx.post(f"{server}/v1/rerank", json=body, timeout=30).json()
    assert answer["usage"]["total_tokens"] > len(DOCUMENTS) * 5
    assert answer["model"].endswith("ce-fixture") or "ce-fixture" in answer["model"]
    order = expected_order(ce_reference["sigmoid"])[:4]
    assert [r["index"] for r in answer["results"]] == order
    assert [r["document"]["text"] for r in answer["results"]] == [DOCUMENTS[i] for i in order]


def test_tei_shape_raw_scores_and_text(server: str, ce_reference: dict[str, np.ndarray]) -> None:
    body = {"model": "ce-fixture", "query": QUERY, "texts": DOCUMENTS, "raw_scores": True, "return_text": True}
    answer = httpx.post(f"{server}/rerank", json=body, timeout=30).json()
    assert [r["index"] for r in answer] == expected_order(ce_reference["raw"])
    for item in answer:
        assert item["score"] == pytest.approx(ce_reference["raw"][item["index"]], abs=1e-5)
        assert item["text"] == DOCUMENTS[item["index"]]


def test_default_model_when_model_omitted_or_named_default(server: str, bi_reference: np.ndarray) -> None:
    for body in ({"query": QUERY, "texts": DOCUMENTS}, {"model": "default", "query": QUERY, "texts": DOCUMENTS}):
        answer = httpx.post(f"{server}/rerank", json=body, timeout=30).json()
        assert [r["index"] for r in answer] == expected_order(bi_reference)
        assert "text" not in answer[0]


def test_ties_keep_original_order(server: str) -> None:
    body = {"model": "ce-fixture", "query": QUERY, "documents": ["same text", "other", "same text", "same text"]}
    results = httpx.post(f"{server}/v2/rerank", json=body, timeout=30).json()["results"]
    same = [r["index"] for r in results if r["index"] in (0, 2, 3)]
    assert same == [0, 2, 3]


def test_models_lists_every_name(server: str) -> None:
    data = httpx.get(f"{server}/v1/models", timeout=10).json()["data"]
    assert [m["kind"] for m in data] == ["bi-encoder", "cross-encoder"]
    assert data[0]["default"] is True
    assert {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"} <= set(data[0]["aliases"])
    assert {"ce-fixture", "rerankd/ce-fixture"} <= set(data[1]["aliases"])


def test_openapi_docs_are_served(server: str) -> None:
    assert httpx.get(f"{server}/docs", timeout=10).status_code == 200
    paths = httpx.get(f"{server}/openapi.json", timeout=10).json()["paths"]
    assert {"/v2/rerank", "/v1/rerank", "/rerank", "/health", "/ready", "/v1/models"} <= set(paths)


def test_metrics_count_requests(server: str) -> None:
    httpx.post(f"{server}/rerank", json={"query": QUERY, "texts": DOCUMENTS[:2]}, timeout=30)
    for path in ("/wp-admin/a", "/wp-admin/b"):  # unknown paths share one label: scanners add no series
        assert httpx.get(f"{server}{path}", timeout=10).status_code == 404
    invalid = httpx.post(f"{server}/v1/rerank", json={"query": QUERY, "documents": []}, timeout=10)
    text = httpx.get(f"{server}/metrics", timeout=10).text
    assert 'rerankd_requests_total{route="/rerank",status="200"}' in text
    assert 'rerankd_requests_total{route="other",status="404"} 2.0' in text
    assert f'rerankd_requests_total{{route="/v1/rerank",status="{invalid.status_code}"}}' in text
    assert 'rerankd_request_duration_seconds_count{route="/rerank"}' in text
    assert "wp-admin" not in text
    assert "rerankd_batch_tokens_bucket" in text
    assert "rerankd_ready 1.0" in text
