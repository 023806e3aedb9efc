"""precision int8-rescore: int8 for every document, fp32 for the head, so the head is exactly fp32's.

The ce-fixture over HTTP (Cohere v2) against in-process services at fp32 and int8, on near-identical documents
whose close scores int8 reorders; the choice of precision by CPU flags, on any CPU; the refusals at start-up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from conftest import DEBIAN_DATA, TRAINED_CE, ThreadServer, is_ready, wait_until

from rerankd.api import create_app
from rerankd.backends.select import choose
from rerankd.config import Settings
from rerankd.pipeline.rescore import head_size
from rerankd.pipeline.service import LocalService
from rerankd.pipeline.types import RerankRequest, RerankResult

QUERY = "a small embedded SQL database library"
# Near-identical documents: their scores are close, so int8's rounding reorders them.
NAMES = ["sqlite", "lmdb", "duckdb", "berkeley", "tinydb", "leveldb", "rocksdb", "h2", "derby", "hsqldb", "firebird"]
DOCUMENTS = [f"{name}: an embedded {kind} database library for C code" for name in NAMES for kind in ("SQL", "tiny")]
HEAD_MIN = 6  # rescore_head_min: small, so a head of 6 among 22 documents leaves a tail to check
TOP_N = 2  # head = max(2 x 2, 6) = 6


def settings(precision: str, **extra: object) -> Settings:
    base = {"model": ["ce-fixture"], "embedding_model": "", "rescore_head_min": HEAD_MIN, "warmup_seconds": 0}
    return Settings(**{**base, **extra}, backend="onnx", device="cpu", precision=precision)


@pytest.fixture(scope="module")
def references(ce_fixture_path) -> Iterator[dict[str, RerankResult]]:
    """Every document ranked in process at fp32 and at int8 (no top_n)."""
    answers = {}
    for precision in ("fp32", "int8"):
        service = LocalService(settings(precision))
        service.load()
        try:
            answers[precision] = asyncio.run(service.rerank(RerankRequest(QUERY, DOCUMENTS, strategy="direct")))
        finally:
            service.close()
    return answers


@pytest.fixture(scope="module")
def rescore_url(ce_fixture_path) -> Iterator[str]:
    """A server at int8-rescore, over HTTP, once it is ready."""
    with ThreadServer(create_app(settings("int8-rescore"))) as server:
        wait_until(lambda: is_ready(server.url), timeout=180, interval=0.2)
        yield server.url


def rerank(url: str, **body: object) -> dict:
    response = httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS, **body}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def ranked(result: RerankResult) -> list[tuple[int, float]]:
    return [(item.index, item.score) for item in result.results]


def test_the_head_is_fp32s_order_and_scores_where_int8_alone_reorders_it(references, rescore_url) -> None:
    fp32, int8 = ranked(references["fp32"]), ranked(references["int8"])
    assert [i for i, _ in int8[:TOP_N]] != [i for i, _ in fp32[:TOP_N]], "precondition: int8 must reorder the top"
    answer = rerank(rescore_url, top_n=TOP_N)["results"]
    assert len(answer) == TOP_N
    assert [item["index"] for item in answer] == [i for i, _ in fp32[:TOP_N]]
    np.testing.assert_allclose([item["relevance_score"] for item in answer], [s for _, s in fp32[:TOP_N]], atol=1e-4)


def test_without_top_n_the_head_is_fp32_and_the_tail_keeps_int8s_order_and_scores(references, rescore_url) -> None:
    fp32_scores = dict(ranked(references["fp32"]))
    int8 = ranked(references["int8"])
    body = rerank(rescore_url)
    answer = [(item["index"], item["relevance_score"]) for item in body["results"]]
    assert sorted(i for i, _ in answer) == list(range(len(DOCUMENTS)))  # every document, once
    size = head_size(None, HEAD_MIN)
    head, tail = answer[:size], answer[size:]
    assert {i for i, _ in head} == {i for i, _ in int8[:size]}  # the head is int8's top
    assert [i for i, _ in head] == sorted((i for i, _ in head), key=lambda i: -fp32_scores[i])  # in fp32's order
    np.testing.assert_allclose([s for _, s in head], [fp32_scores[i] for i, _ in head], atol=1e-4)
    assert [i for i, _ in tail] == [i for i, _ in int8[size:]]  # below it, int8's order and scores
    np.testing.assert_allclose([s for _, s in tail], [s for _, s in int8[size:]], atol=1e-6)
    assert body["meta"]["rerankd"]["rescored"]["documents"] == size


def test_a_larger_top_n_re_scores_twice_as_many_and_repeats_come_from_the_score_cache(references, rescore_url) -> None:
    fp32 = ranked(references["fp32"])
    top_n = 5  # head = 10: larger than rescore_head_min
    first = rerank(rescore_url, top_n=top_n)
    assert first["meta"]["rerankd"]["rescored"]["documents"] == 2 * top_n
    assert [item["index"] for item in first["results"]] == [i for i, _ in fp32[:top_n]]
    again = rerank(rescore_url, top_n=top_n)
    assert again["results"] == first["results"]
    metrics = httpx.get(f"{rescore_url}/metrics", timeout=10).text
    hits = [line for line in metrics.splitlines() if line.startswith("rerankd_score_cache_hits_total{")]
    assert hits and float(hits[0].rsplit(" ", 1)[1]) >= len(DOCUMENTS)  # the int8 pass was all hits


def test_documents_cut_by_a_pre_filter_stay_below_the_re_scored_head(rescore_url) -> None:
    body = rerank(rescore_url, strategy="hybrid", candidates=4)  # all 4 candidates re-scored, 18 cut
    results = body["results"]
    assert [item.get("cut_by_prefilter", False) for item in results] == [False] * 4 + [True] * 18
    scores = [item["relevance_score"] for item in results]
    assert scores == sorted(scores, reverse=True)
    assert body["meta"]["rerankd"]["rescored"]["documents"] == 4


def test_fused_requests_keep_int8_scores_and_say_so(rescore_url) -> None:
    rescored = rerank(rescore_url, strategy="hybrid", candidates=10, fusion="zscore")["meta"]["rerankd"]["rescored"]
    assert rescored["documents"] == 0 and "fusion" in rescored["reason"]


def test_v1_models_names_the_fp32_head(rescore_url) -> None:
    models = httpx.get(f"{rescore_url}/v1/models", timeout=10).json()
    assert any("int8+fp32-head" in str(model) for model in models["data"])


@pytest.mark.skipif(not TRAINED_CE.is_dir(), reason="needs ../shared/models/debian-minilm-ce (the trained model)")
def test_the_trained_models_top_ten_is_fp32s() -> None:
    """The trained cross-encoder on a query whose int8 top 10 differs from fp32's."""
    from rerankd.datasets import load_beir

    data = load_beir(DEBIAN_DATA)
    query = next(iter(data.queries.values()))
    documents = list(data.corpus.values())[:60]
    answers = {}
    for precision in ("fp32", "int8", "int8-rescore"):
        service = LocalService(settings(precision, model=[str(TRAINED_CE)], rescore_head_min=20))
        service.load()
        try:
            answers[precision] = asyncio.run(service.rerank(RerankRequest(query, documents, top_n=10)))
        finally:
            service.close()
    exact = ranked(answers["fp32"])
    assert [i for i, _ in ranked(answers["int8"])] != [i for i, _ in exact], "precondition: int8 must reorder the top"
    assert [i for i, _ in ranked(answers["int8-rescore"])] == [i for i, _ in exact]
    np.testing.assert_allclose([s for _, s in ranked(answers["int8-rescore"])], [s for _, s in exact], atol=1e-4)


# -- choosing the precision, on any CPU ---------------------------------------------------------------------------

VNNI = frozenset({"avx2", "avx512_vnni"})


@pytest.mark.parametrize("flags", [VNNI, frozenset({"avx_vnni"}), frozenset({"amx_int8"}), frozenset({"asimddp"})])
def test_auto_picks_int8_rescore_for_cross_encoders_where_int8_has_dot_products(flags: frozenset[str]) -> None:
    choice = choose(Settings(device="cpu"), flags)
    assert (choice.backend, choice.precision, choice.scoring_precision) == ("onnx", "int8-rescore", "int8")
    assert choice.reason.startswith("auto")


def test_auto_keeps_fp32_on_avx2_for_other_kinds_and_on_torch() -> None:
    cpu = Settings(device="cpu")
    assert choose(cpu, frozenset({"avx2", "fma"})).precision == "fp32"
    assert choose(cpu, VNNI, kind="bi-encoder").precision == "fp32"
    assert choose(cpu, VNNI, kind="causal-lm").precision == "fp32"
    assert choose(Settings(device="cpu", backend="torch"), VNNI).precision == "fp32"


@pytest.mark.parametrize(
    ("overrides", "kind", "message"),
    [
        ({"backend": "torch"}, "cross-encoder", "int8-rescore needs --backend onnx"),
        ({}, "bi-encoder", "this model is a bi-encoder"),
        ({}, "causal-lm", "this model is a causal-lm"),
    ],
)
def test_int8_rescore_is_refused_where_it_cannot_run(overrides: dict, kind: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        choose(Settings(device="cpu", precision="int8-rescore", **overrides), frozenset(), kind=kind)


def test_serving_a_bi_encoder_at_int8_rescore_fails_at_start_up_with_the_reason() -> None:
    service = LocalService(Settings(model=["default"], precision="int8-rescore", warmup_seconds=0, embedding_model=""))
    with pytest.raises(ValueError, match="int8-rescore re-scores the head of an encoder cross-encoder"):
        service.load()
    assert service.state == "failed"


def test_the_embedding_pre_filter_loads_beside_an_int8_rescore_cross_encoder(ce_fixture_path) -> None:
    service = LocalService(settings("int8-rescore", embedding_model="default"))
    service.load()
    try:
        answer = asyncio.run(service.rerank(RerankRequest(QUERY, DOCUMENTS, strategy="bi-encoder", candidates=5)))
        assert answer.meta["rerankd"]["rescored"]["documents"] == 5
    finally:
        service.close()
