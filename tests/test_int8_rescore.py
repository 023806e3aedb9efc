"""precision int8-rescore: int8 for every document, fp32 for the head, so the head is exactly fp32's.

The ce-fixture over HTTP (Cohere v2) and the default bi-encoder in process, against in-process services at fp32
and int8, on near-identical documents whose close scores int8 reorders; requests within the head (the fp32 twin
alone); the twin's work in admission and the plan; the choice of precision by CPU flags, on any CPU; the refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from conftest import DEBIAN_DATA, TRAINED_CE, ThreadServer, is_ready, wait_until

from rerankd.api import create_app
from rerankd.backends.select import choose
from rerankd.config import Settings
from rerankd.cpu import Cpu
from rerankd.pipeline.planner import MIN_CANDIDATES, Costs, plan
from rerankd.pipeline.rescore import embedding_model_settings, head_size
from rerankd.pipeline.run import plan as plan_step
from rerankd.pipeline.run.head import onto_head_scale
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


@contextlib.contextmanager
def loaded(precision: str, **extra: object) -> Iterator[LocalService]:
    service = LocalService(settings(precision, **extra))
    service.load()
    try:
        yield service
    finally:
        service.close()


def ask(service: LocalService, documents: list[str] = DOCUMENTS, **fields: object) -> RerankResult:
    return asyncio.run(service.rerank(RerankRequest(QUERY, documents, **fields)))  # type: ignore[arg-type]


def fp32_and_int8(**extra: object) -> dict[str, RerankResult]:
    """Every document ranked in process at fp32 and at int8 (no top_n)."""
    answers = {}
    for precision in ("fp32", "int8"):
        with loaded(precision, **extra) as service:
            answers[precision] = ask(service, strategy="direct")
    return answers


@pytest.fixture(scope="module")
def references(ce_fixture_path) -> dict[str, RerankResult]:
    return fp32_and_int8()


@pytest.fixture(scope="module")
def ce_service(ce_fixture_path) -> Iterator[LocalService]:
    """The ce-fixture at int8-rescore in process, without a score cache: every request runs the model."""
    with loaded("int8-rescore", score_cache_mb=0) as service:
        yield service


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


def test_without_top_n_the_head_is_fp32_and_the_tail_keeps_int8s_order_on_the_heads_scale(
    references, rescore_url
) -> None:
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
    assert [i for i, _ in tail] == [i for i, _ in int8[size:]]  # below it, int8's order
    scores = [s for _, s in answer]
    assert np.all(np.diff(scores) < 0), "every score agrees with the returned order"
    # On the head's scale: the tail's int8 logits moved by the head's own median (fp32 - int8) difference.
    int8_scores = dict(int8)
    shift = np.median([logit(fp32_scores[i]) - logit(int8_scores[i]) for i, _ in head])
    expected = [min(sigmoid(logit(int8_scores[i]) + shift), head[-1][1]) for i, _ in tail]
    np.testing.assert_allclose([s for _, s in tail], expected, atol=1e-5)
    assert body["meta"]["rerankd"]["rescored"]["documents"] == size


def logit(p: float) -> float:
    return float(np.log(p) - np.log1p(-p))


def sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


@pytest.mark.parametrize("probabilities", [True, False])
def test_the_tail_is_shifted_onto_the_heads_scale_and_kept_below_it(probabilities: bool) -> None:
    """The probe's case: the head's last re-scored score (0.0772) under an int8 tail score (0.0777)."""
    head_int8, head_exact = np.array([0.30, 0.20, 0.0790]), np.array([0.31, 0.19, 0.0772])
    tail = np.array([0.0777, 0.0777, 0.05, 0.01])
    mapped = onto_head_scale(head_int8, head_exact, tail, floor=0.0772, probabilities=probabilities)
    assert np.all(mapped < 0.0772) and np.all(np.diff(mapped) < 0)  # below the head, strictly in order
    assert mapped[-1] == pytest.approx(
        sigmoid(logit(0.01) + np.median([logit(e) - logit(i) for e, i in zip(head_exact, head_int8, strict=True)]))
        if probabilities
        else 0.01 + np.median(head_exact - head_int8)
    )
    if probabilities:
        assert np.all((mapped > 0) & (mapped < 1))


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


# -- requests within the head: the fp32 twin alone ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("documents", "fields"),
    [(DOCUMENTS[: HEAD_MIN - 1], {"strategy": "direct"}), (DOCUMENTS, {"strategy": "hybrid", "candidates": 4})],
    ids=["5 documents", "4 candidates after the pre-filter"],
)
def test_a_request_within_the_head_is_scored_by_the_fp32_twin_alone(
    references, ce_service: LocalService, documents: list[str], fields: dict
) -> None:
    fp32 = dict(ranked(references["fp32"]))
    int8_engine = ce_service.registry.default
    before = int8_engine.stats().batches_done
    answer = ask(ce_service, documents, **fields)
    assert int8_engine.stats().batches_done == before  # no int8 pass
    scored = [(item.index, item.score) for item in answer.results if not item.cut_by_prefilter]
    assert len(scored) == min(len(documents), fields.get("candidates", len(documents)))
    assert [i for i, _ in scored] == sorted((i for i, _ in scored), key=lambda i: -fp32[i])  # fp32's order
    np.testing.assert_allclose([s for _, s in scored], [fp32[i] for i, _ in scored], atol=1e-4)
    rescored = answer.meta["rerankd"]["rescored"]
    assert (rescored["documents"], rescored["precision"]) == (len(scored), "fp32")
    assert "no int8 pass" in rescored["reason"]
    ask(ce_service, strategy="direct")  # 22 documents, over the head: int8 runs, and the counter says so
    assert int8_engine.stats().batches_done > before


# -- the bi-encoder ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bi_references() -> dict[str, RerankResult]:
    return fp32_and_int8(model=["default"])


@pytest.fixture(scope="module")
def bi_service() -> Iterator[LocalService]:
    """The default bi-encoder at int8-rescore in process, also its own embedding pre-filter; no score cache."""
    with loaded("int8-rescore", model=["default"], embedding_model="default", score_cache_mb=0) as service:
        yield service


def test_a_bi_encoders_head_is_fp32s_with_the_query_embedded_in_fp32_too(bi_references, bi_service) -> None:
    fp32, int8 = ranked(bi_references["fp32"]), ranked(bi_references["int8"])
    assert [i for i, _ in int8[:TOP_N]] != [i for i, _ in fp32[:TOP_N]], "precondition: int8 must reorder the top"
    answer = ask(bi_service, top_n=TOP_N, strategy="direct")
    assert [i for i, _ in ranked(answer)] == [i for i, _ in fp32[:TOP_N]]
    # fp32's cosines within 1e-4: the twin embeds the query too (int8's cosines differ by ~1e-2 here)
    np.testing.assert_allclose([s for _, s in ranked(answer)], [s for _, s in fp32[:TOP_N]], atol=1e-4)
    assert answer.meta["rerankd"]["rescored"]["documents"] == head_size(TOP_N, HEAD_MIN)
    assert bi_service.models()[0].engine.endswith("int8+fp32-head")


def test_a_bi_encoder_at_int8_rescore_pre_filters_with_its_fp32_twin(bi_references, bi_service) -> None:
    """Served and pre-filter model alike: the pre-filter embeds in fp32 as before, so its 5 candidates are fp32's
    top 5 (int8's differ), and within the head the twin scores them alone: no int8 work at all."""
    fp32 = [i for i, _ in ranked(bi_references["fp32"])]
    int8_engine = bi_service.registry.default
    before = int8_engine.stats().batches_done
    answer = ask(bi_service, top_n=5, strategy="bi-encoder", candidates=5)
    assert int8_engine.stats().batches_done == before
    assert [item.index for item in answer.results] == fp32[:5]
    assert answer.meta["rerankd"]["prefilter"] == "embeddings:" + int8_engine.spec.name


# -- the twin's work in admission and in the plan ----------------------------------------------------------------


def test_admission_counts_the_fp32_heads_work(ce_service: LocalService, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same 22 documents with heads of 6, 10 and 20, and of all 22 (the twin alone): the admitted work grows by
    one fp32 document's time per head document. Captured at admission, before any work changes the estimates."""
    captured: list[float] = []

    class Admitted(Exception):
        pass

    def admit(*stages):
        captured.append(sum(stage.seconds for stage in stages))
        raise Admitted

    monkeypatch.setattr(ce_service.admission, "admit", admit)
    for top_n in (2, 5, 10, 11):
        with pytest.raises(Admitted):
            ask(ce_service, top_n=top_n, strategy="direct")
    head_6, head_10, head_20, alone = captured
    fp32_document = (head_10 - head_6) / 4
    assert fp32_document > 0
    assert head_20 - head_10 == pytest.approx(10 * fp32_document)
    assert alone == pytest.approx(len(DOCUMENTS) * fp32_document)  # no int8 pass counted


def test_the_plan_counts_the_fp32_head(ce_service: LocalService, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Costs] = []

    def planned(*args, **kwargs):
        seen.append(args[2])
        return plan(*args, **kwargs)

    monkeypatch.setattr(plan_step, "plan", planned)
    answer = ask(ce_service, top_n=TOP_N, strategy="direct")
    costs = seen[0]
    assert (costs.rescored_head, costs.rescored_pairs_per_second > 0) == (head_size(TOP_N, HEAD_MIN), True)
    expected = costs.fixed_ms + costs.model_ms(len(DOCUMENTS))
    assert expected > costs.fixed_ms + dataclasses.replace(costs, rescored_head=0).model_ms(len(DOCUMENTS))
    assert answer.meta["rerankd"]["estimate_ms"] == pytest.approx(expected, abs=0.1)


def test_the_planner_fits_k_with_the_head_and_the_twin_alone_within_it() -> None:
    costs = Costs(pairs_per_second=100.0, rescored_head=20, rescored_pairs_per_second=50.0)  # int8 10 ms, fp32 20 ms
    assert costs.model_ms(100) == pytest.approx(1000 + 20 * 20)
    assert costs.model_ms(15) == pytest.approx(15 * 20)  # the twin alone
    direct = plan("auto", 100, costs)
    assert direct.estimate_ms == pytest.approx(1400)
    chosen = plan("auto", 100, costs, budget_ms=1500)  # 1,275 ms usable: direct's 1,400 do not fit
    assert (chosen.strategy, chosen.candidates) == ("hybrid", (1275 - 400) // 10)
    small = plan("hybrid", 100, costs, budget_ms=300)  # 255 ms usable: under the head's 400, the twin alone
    assert small.candidates == 255 // 20 >= MIN_CANDIDATES
    assert small.estimate_ms == pytest.approx(12 * 20)


@pytest.mark.skipif(not TRAINED_CE.is_dir(), reason="needs ../shared/models/debian-minilm-ce (the trained model)")
@pytest.mark.slow  # the trained model over real queries, twice
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


def test_auto_never_runs_int8_rescore_for_llm_rerankers_or_on_torch() -> None:
    """Which encoder engine `auto` picks per CPU class is tests/test_openvino.py's (from the measured table)."""
    for flags in (VNNI, frozenset({"avx2", "fma"})):
        assert choose(Settings(device="cpu"), flags, kind="causal-lm").precision == "fp32"
        assert choose(Settings(device="cpu", backend="torch"), flags).precision == "fp32"


@pytest.mark.parametrize(
    ("overrides", "kind", "message"),
    [
        ({"backend": "torch"}, "cross-encoder", "int8-rescore needs --backend onnx or openvino"),
        ({"backend": "torch"}, "bi-encoder", "int8-rescore needs --backend onnx or openvino"),
        ({}, "causal-lm", "this model is a causal-lm, whose int8 is not verified: use fp32"),
    ],
)
def test_int8_rescore_is_refused_where_it_cannot_run(overrides: dict, kind: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        choose(Settings(device="cpu", precision="int8-rescore", **overrides), frozenset(), kind=kind)


def test_serving_an_llm_reranker_at_int8_rescore_fails_at_start_up_with_the_reason() -> None:
    from test_golden_llm import build_tiny_llm

    llm = str(build_tiny_llm("qwen3"))
    service = LocalService(Settings(model=[llm], precision="int8-rescore", warmup_seconds=0, embedding_model=""))
    with pytest.raises(ValueError, match="this model is a causal-lm"):
        service.load()
    assert service.state == "failed"


def test_the_embedding_pre_filter_embeds_in_fp32_where_int8_rescore_would_be_chosen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It has no head to re-score: as before bi-encoders could run int8-rescore, fp32 (configured int8 stays)."""
    monkeypatch.setattr("rerankd.backends.select.this_cpu", lambda: Cpu("vnni", VNNI))
    for precision in ("auto", "int8-rescore"):
        prefilter = embedding_model_settings(Settings(device="cpu", precision=precision))
        assert choose(prefilter, kind="bi-encoder").precision == "fp32"
    assert embedding_model_settings(Settings(device="cpu", precision="int8")).precision == "int8"


def test_the_embedding_pre_filter_loads_beside_an_int8_rescore_cross_encoder(ce_fixture_path) -> None:
    service = LocalService(settings("int8-rescore", embedding_model="default"))
    service.load()
    try:
        answer = asyncio.run(service.rerank(RerankRequest(QUERY, DOCUMENTS, strategy="bi-encoder", candidates=5)))
        assert answer.meta["rerankd"]["rescored"]["documents"] == 5
    finally:
        service.close()
