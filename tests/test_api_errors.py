"""Bad input gets a clear 4xx naming the field and the limit; the server keeps serving afterwards."""

from __future__ import annotations

import httpx
import pytest
from conftest import SERVER_MAX_DOCUMENTS, SERVER_MAX_REQUEST_BYTES

GOOD = {"query": "database", "documents": ["SQLite is a database.", "A game."]}


def post(server: str, path: str, body: object) -> httpx.Response:
    return httpx.post(f"{server}{path}", json=body, timeout=30)


def assert_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] and error["message"]
    for word in words:
        assert word in error["message"], error["message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/v2/rerank", {**GOOD, "query": ""}, 400, ["query", "empty"]),
        ("/v2/rerank", {**GOOD, "query": "   "}, 400, ["query", "empty"]),
        ("/v2/rerank", {**GOOD, "documents": []}, 400, ["documents", "at least one"]),
        ("/rerank", {"query": "q", "texts": []}, 400, ["texts", "at least one"]),
        ("/v2/rerank", {**GOOD, "documents": ["ok", 7]}, 422, ["documents[1]", "string"]),
        ("/v2/rerank", {**GOOD, "documents": "not a list"}, 422, ["documents"]),
        ("/v2/rerank", {"documents": ["a"]}, 422, ["query", "required"]),
        ("/v1/rerank", {**GOOD, "documents": [{"title": "no text"}]}, 422, ["documents[0]"]),
        ("/v2/rerank", {**GOOD, "top_n": 0}, 400, ["top_n", "at least 1"]),
        ("/v2/rerank", {**GOOD, "max_tokens_per_doc": 0}, 400, ["max_tokens_per_doc"]),
        ("/v2/rerank", {**GOOD, "documents": ["d"] * (SERVER_MAX_DOCUMENTS + 1)}, 400,
         ["documents", f"at most {SERVER_MAX_DOCUMENTS}", "max_documents", str(SERVER_MAX_DOCUMENTS + 1)]),
        ("/rerank", {"query": "q", "texts": ["d"] * (SERVER_MAX_DOCUMENTS + 1)}, 400, ["texts", "max_documents"]),
        ("/v2/rerank", {**GOOD, "model": "no-such-model"}, 404, ["no-such-model", "served names", "default"]),
        ("/rerank", {"query": "q", "texts": ["a " * 2000], "truncate": False}, 413, ["texts[0]", "256", "truncate"]),
        ("/rerank", {"query": "q", "texts": ["a"], "truncation_direction": "Left"}, 400, ["truncation_direction"]),
        # A cascade into the model itself (by any of its names) would score every document twice.
        ("/v2/rerank", {**GOOD, "model": "ce-fixture", "first_stage_model": "rerankd/ce-fixture", "strategy": "hybrid"},
         400, ["first_stage_model", "'rerankd/ce-fixture'", "another served model"]),
        ("/rerank", {"query": "q", "texts": ["a", "b"], "first_stage_model": "default"}, 400, ["first_stage_model"]),
        ("/v1/rerank", {**GOOD, "model": "all-MiniLM-L6-v2", "first_stage_model": "sentence-transformers/all-MiniLM-L6-v2"},  # noqa: E501
         400, ["first_stage_model", "sentence-transformers/all-MiniLM-L6-v2"]),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_4xx(server: str, path: str, body: object, status: int, words: list[str]) -> None:
    assert_error(post(server, path, body), status, *words)
    assert post(server, "/v2/rerank", GOOD).status_code == 200


# Wrong JSON types are a 422 naming the field, never coerced: "100" is not a number, true is not 1, 2.0 not an int.
WRONG_TYPES = [
    ("/v2/rerank", "top_n", "3"), ("/v2/rerank", "top_n", True), ("/v2/rerank", "top_n", 2.0),
    ("/v2/rerank", "max_tokens_per_doc", "8"), ("/v2/rerank", "return_documents", 1),
    ("/v1/rerank", "return_documents", "true"), ("/v2/rerank", "timeout_ms", "100"), ("/v2/rerank", "timeout_ms", True),
    ("/v2/rerank", "latency_budget_ms", "50"), ("/v2/rerank", "candidates", True), ("/v2/rerank", "candidates", 1.5),
    ("/v2/rerank", "fusion_weight", "0.5"), ("/v2/rerank", "first_stage_scores", ["1", "2"]),
    ("/v2/rerank", "chunking", 1), ("/v2/rerank", "max_chunks_per_doc", "2"), ("/v2/rerank", "instruction", 7),
    ("/v2/rerank", "first_stage_model", True), ("/v2/rerank", "model", 1),
    ("/rerank", "raw_scores", 1), ("/rerank", "truncate", "false"), ("/rerank", "return_text", "yes"),
    ("/rerank", "timeout_ms", False),
]  # fmt: skip


@pytest.mark.parametrize(("path", "field", "value"), WRONG_TYPES)
def test_wrong_json_types_are_422_not_coerced(server: str, path: str, field: str, value: object) -> None:
    body = {"query": "q", "texts": ["a", "b"]} if path == "/rerank" else {**GOOD}
    assert_error(post(server, path, {**body, field: value}), 422, field)


@pytest.mark.parametrize("timeout_ms", [5e-324, 1e-3, 0.999, 0, -5])
def test_a_deadline_under_one_ms_is_a_400_not_no_deadline(server: str, timeout_ms: float) -> None:
    assert_error(post(server, "/v2/rerank", {**GOOD, "timeout_ms": timeout_ms}), 400, "timeout_ms", "at least 1")


def test_json_numbers_of_either_form_pass_where_a_number_is_expected(server: str) -> None:
    body = {**GOOD, "top_n": 1, "timeout_ms": 30_000, "latency_budget_ms": 5000.5, "fusion_weight": 0, "candidates": 2}
    body |= {"first_stage_scores": [1, 0.5], "return_documents": True}
    assert post(server, "/v2/rerank", body).status_code == 200


def test_invalid_json_is_422(server: str) -> None:
    response = httpx.post(
        f"{server}/v2/rerank", content=b'{"query": "q", "documents": [', headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "body")


def test_body_over_the_limit_is_413(server: str) -> None:
    big = {**GOOD, "documents": ["x" * 5000] * 50}
    assert_error(post(server, "/v2/rerank", big), 413, "max_request_bytes", str(SERVER_MAX_REQUEST_BYTES))


def test_streamed_body_over_the_limit_is_413(server: str) -> None:
    def chunks():
        yield b'{"query": "q", "documents": ['
        for _ in range(100):
            yield b'"' + b"y" * 4000 + b'",'
        yield b'"end"]}'

    response = httpx.post(f"{server}/v2/rerank", content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, 413, "max_request_bytes", "at least")


def test_long_documents_are_truncated_not_rejected(server: str) -> None:
    documents = ["word " * 5000, "short"]
    for path, body in (
        ("/v2/rerank", {"query": "q", "documents": documents}),
        ("/rerank", {"query": "q", "texts": documents}),
        ("/v1/rerank", {"query": "q" * 3000, "documents": documents}),
    ):
        assert post(server, path, body).status_code == 200


def test_max_tokens_per_doc_cuts_documents(server: str) -> None:
    base = "SQLite is a database. "
    documents = [base, base + "unrelated words about games and menus " * 40]
    clipped = post(server, "/v2/rerank", {"query": "sqlite database", "documents": documents, "max_tokens_per_doc": 6})
    scores = {r["index"]: r["relevance_score"] for r in clipped.json()["results"]}
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)  # both cut to the same first six tokens
    full = post(server, "/v2/rerank", {"query": "sqlite database", "documents": documents}).json()["results"]
    assert {r["index"]: r["relevance_score"] for r in full}[1] != pytest.approx(scores[1], abs=1e-4)
