"""Each step of the request runner (pipeline/run/) on its own: plan, first stage, score (deadline slicing with a
fake clock), int8-rescore's head, rank, describe; and the runner calling them once each, in order.

Engines are the real ce-fixture (small, offline) where a step runs one; the rest are numbers written down here.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from rerankd.config import Settings
from rerankd.engine.engine import Engine
from rerankd.errors import PayloadTooLarge
from rerankd.first_stage import bm25_scores
from rerankd.first_stage.corpus_stats import Bm25Statistics
from rerankd.models import resolve_model
from rerankd.pipeline.calibration import Calibration, ScoreMap
from rerankd.pipeline.costs import CostModel, RescoredHead
from rerankd.pipeline.planner import Costs, Plan, plan
from rerankd.pipeline.run import head, runner
from rerankd.pipeline.run.describe import describe, ranked
from rerankd.pipeline.run.first_stage import Bm25Scorer, FirstStage
from rerankd.pipeline.run.options import ChunkOptions, Options, Outcome
from rerankd.pipeline.run.plan import choose, cut_short, estimate
from rerankd.pipeline.run.rank import finalise, fusion_meta, rank
from rerankd.pipeline.run.score import (
    DEADLINE_SHARE,
    DEADLINE_SLICE,
    Scored,
    ScoringJob,
    chunk_rule,
    deadline,
    rough_rule,
    score,
    score_until,
)

QUERY = "embedded sql database library"
DOCUMENTS = [
    "SQLite is a C library that implements an embedded SQL database engine.",
    "A real-time strategy game of ancient warfare.",
    "Berkeley DB is an embedded key-value database library.",
    "Fonts for the terminal.",
    "PostgreSQL is an object-relational SQL database server.",
]
LONG = "LMDB is a small embedded database library with a key-value store. " * 80  # ~1,000 tokens: chunks


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    settings = Settings(backend="onnx", precision="fp32", device="cpu", warmup_seconds=0, score_cache_mb=0)
    loaded = Engine.load(resolve_model("ce-fixture"), settings)
    yield loaded
    loaded.close()


async def _no_embeddings() -> Any:
    raise AssertionError("no embeddings were asked for")


def first_stage(options: Options, documents: list[str] = DOCUMENTS, bm25: Bm25Scorer | None = None) -> FirstStage:
    bm25 = bm25 or Bm25Scorer(Bm25Statistics(), CostModel())
    return FirstStage(bm25, _no_embeddings, "ce-fixture", QUERY, documents, options)


def a_plan(strategy: str = "hybrid", candidates: int = 3, documents: int = 5, reason: str = "candidates") -> Plan:
    return Plan(strategy, candidates, documents, 1.0, None, reason)  # type: ignore[arg-type]


# -- plan ---------------------------------------------------------------------------------------------------------


def test_a_cascade_counts_its_first_models_time_as_the_first_stages(engine: Engine) -> None:
    costs = CostModel()
    query = engine.query_tokens(QUERY)
    alone, _ = asyncio.run(estimate(costs, engine, query, DOCUMENTS, Options(), None, first_stage(Options())))
    assert alone.first_stage_ms == 0
    cascade = Options(strategy="hybrid", first_stage_model=engine)
    with_first, _ = asyncio.run(estimate(costs, engine, query, DOCUMENTS, cascade, None, first_stage(cascade)))
    first_costs, _ = costs.costs(engine, len(query), DOCUMENTS, chunks=None, bm25=False)
    expected = first_costs.fixed_ms + first_costs.model_ms(len(DOCUMENTS))
    assert with_first.first_stage_ms == pytest.approx(expected) and expected > 0
    assert dataclasses.replace(with_first, first_stage_ms=0) == alone


def test_fusion_on_bm25_counts_bm25_and_known_scores_count_nothing(engine: Engine) -> None:
    costs = CostModel()
    query = engine.query_tokens(QUERY)
    fused = Options(fusion="zscore")
    bm25, _ = asyncio.run(estimate(costs, engine, query, DOCUMENTS, fused, None, first_stage(fused)))
    known = dataclasses.replace(fused, first_stage_scores=np.arange(5.0))
    given, _ = asyncio.run(estimate(costs, engine, query, DOCUMENTS, known, None, first_stage(known)))
    assert bm25.fixed_ms - given.fixed_ms == pytest.approx(costs.bm25_ms(len(DOCUMENTS)))


def test_choose_plans_with_the_requests_fields_and_shrinks_k_by_the_measured_first_stage() -> None:
    costs = Costs(pairs_per_second=100.0)  # 10 ms a document
    options = Options(strategy="hybrid", budget_ms=1000.0, default_candidates=50)
    assert choose(options, 200, costs, "hybrid") == plan("hybrid", 200, costs, budget_ms=1000.0, default_candidates=50)
    before = choose(options, 200, costs, "hybrid")
    after = choose(options, 200, costs, "hybrid", spent_ms=500.0)
    assert (before.candidates, after.candidates) == (85, 35)  # 850 ms usable, then 350


def test_cut_short_moves_the_unscored_ahead_of_the_cut_ones_in_first_stage_order() -> None:
    chosen, candidates, rest = cut_short(a_plan(candidates=4), np.array([5, 3, 1, 7]), np.array([0, 2]), 2)
    assert (candidates.tolist(), rest.tolist()) == ([5, 3], [1, 7, 0, 2])
    assert chosen.candidates == 2 and chosen.reason == "candidates; the deadline stopped scoring after 2"


# -- first stage --------------------------------------------------------------------------------------------------


def test_the_clients_scores_are_the_first_stage_and_nothing_runs() -> None:
    given = np.array([0.1, 2.0, 0.0, 1.5, 0.2])
    first = first_stage(Options(first_stage_scores=given, first_stage_model=object()))  # type: ignore[arg-type]
    assert (first.source, first.known, first.model) == ("first_stage_scores", True, None)
    assert asyncio.run(first.scores()) is given
    assert first.statistics is None


def test_bm25_runs_once_with_the_requests_own_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    bm25 = Bm25Scorer(Bm25Statistics(), CostModel())
    calls: list[int] = []
    original = bm25.scores

    async def counted(*args: Any) -> Any:
        calls.append(1)
        return await original(*args)

    monkeypatch.setattr(bm25, "scores", counted)
    first = first_stage(Options(), bm25=bm25)
    assert (first.source, first.known) == ("bm25", False)
    scores = asyncio.run(first.scores())
    np.testing.assert_allclose(scores, bm25_scores(QUERY, DOCUMENTS, None))
    assert asyncio.run(first.cut_scores("hybrid"))[1] == "bm25"
    assert len(calls) == 1
    assert first.statistics == {"source": "request", "documents": len(DOCUMENTS)}


def test_a_cascades_first_model_scores_every_document_once_and_frees_its_queue(engine: Engine) -> None:
    done: list[int] = []
    options = Options(strategy="hybrid", first_stage_model=engine, first_stage_done=lambda: done.append(1))
    first = first_stage(options)
    assert first.source == "model:rerankd/ce-fixture"
    scores, source = asyncio.run(first.cut_scores("hybrid"))
    asyncio.run(first.scores())
    expected = asyncio.run(engine.score(engine.prepare_sync(QUERY, DOCUMENTS), raw=True))
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert (source, done) == ("model:rerankd/ce-fixture", [1])


def test_the_bi_encoder_strategy_cuts_by_the_embeddings() -> None:
    embedded = np.array([0.3, 0.1, 0.9, 0.0, 0.5])

    class Embeddings:
        engine = SimpleNamespace(spec=SimpleNamespace(name="some/bi-encoder"))

        async def scores(self, query: str, documents: list[str]) -> np.ndarray:
            assert (query, documents) == (QUERY, DOCUMENTS)
            return embedded

    async def lent() -> Any:
        return Embeddings()

    first = FirstStage(Bm25Scorer(Bm25Statistics(), CostModel()), lent, "m", QUERY, DOCUMENTS, Options())
    scores, source = asyncio.run(first.cut_scores("bi-encoder"))
    assert scores is embedded and source == "embeddings:some/bi-encoder"


# -- score --------------------------------------------------------------------------------------------------------


def job(engine: Engine, options: Options | None = None, documents: list[str] = DOCUMENTS) -> ScoringJob:
    options = options or Options()
    query = engine.query_tokens(QUERY)
    return ScoringJob(engine, query, documents, chunk_rule(engine, query, options), options, CostModel())


def test_score_gives_the_models_scores_in_candidate_order_and_learns_lengths(engine: Engine) -> None:
    scoring = job(engine)
    candidates = np.array([4, 0, 2])
    scored = asyncio.run(score(scoring, candidates))
    raw, final = asyncio.run(engine.score_raw_and_final(engine.prepare_sync(QUERY, [DOCUMENTS[i] for i in candidates])))
    np.testing.assert_allclose(scored.raw, raw, rtol=1e-5)
    np.testing.assert_allclose(scored.final, final, rtol=1e-5)
    assert scored.tokens > 0 and scored.meta == {}
    assert scoring.costs._stats(engine).chars_per_token != CostModel()._stats(engine).chars_per_token
    raw_scores = asyncio.run(score(job(engine, Options(raw_scores=True)), candidates))
    np.testing.assert_allclose(raw_scores.final, raw, rtol=1e-5)


def test_a_chunked_document_scores_its_best_chunk(engine: Engine) -> None:
    options = Options(chunks=ChunkOptions(tokens=64, overlap=8, max_chunks=50))
    scored = asyncio.run(score(job(engine, options, [DOCUMENTS[0], LONG]), np.array([0, 1])))
    chunking = scored.meta["chunking"]
    assert chunking["split_documents"] == 1 and chunking["chunks"] > 2 and chunking["capped_documents"] == 0
    assert chunking["chunk_tokens"] == 64
    whole = asyncio.run(score(job(engine, options, [DOCUMENTS[0]]), np.array([0])))
    assert scored.final[0] == pytest.approx(whole.final[0], rel=1e-5)  # a short document is one chunk


def test_truncation_off_refuses_a_document_by_its_index_in_the_request(engine: Engine) -> None:
    documents = [*DOCUMENTS, LONG]
    with pytest.raises(PayloadTooLarge, match=r"^documents\[5\]: longer than"):
        asyncio.run(score(job(engine, Options(truncate=False), documents), np.array([1, 5])))
    capped = Options(truncate=False, chunks=ChunkOptions(tokens=64, overlap=0, max_chunks=2))
    with pytest.raises(PayloadTooLarge, match=r"^documents\[5\]: needs more than max_chunks_per_doc=2"):
        asyncio.run(score(job(engine, capped, documents), np.array([5, 0])))


def test_chunk_rules() -> None:
    fake = SimpleNamespace(spec=SimpleNamespace(max_length=512))
    assert rough_rule(fake, Options()) is None  # type: ignore[arg-type]
    rough = rough_rule(fake, Options(chunks=ChunkOptions(tokens=0, overlap=16, max_chunks=4)))  # type: ignore[arg-type]
    assert (rough.size, rough.overlap, rough.max_chunks) == (256, 16, 4)  # type: ignore[union-attr]


class FakeClock:
    """Time that moves only when a slice is scored: `seconds` per document."""

    def __init__(self, seconds: float) -> None:
        self.now, self.seconds = 0.0, seconds
        self.slices: list[tuple[float, list[int]]] = []  # (start, candidates) per scoring call

    def __call__(self) -> float:
        return self.now

    async def score(self, candidates: np.ndarray) -> Scored:
        self.slices.append((self.now, candidates.tolist()))
        self.now += self.seconds * len(candidates)
        values = -np.asarray(candidates, dtype=np.float64)
        chunking = {"chunk_tokens": 8, "chunks": len(candidates), "split_documents": 1, "capped_documents": 0}
        return Scored(values, values, 10 * len(candidates), {"chunking": chunking})


def test_without_a_deadline_scoring_is_one_call() -> None:
    clock = FakeClock(1.0)
    scored = asyncio.run(score_until(clock.score, np.arange(100), None, clock))
    assert [len(part) for _, part in clock.slices] == [100] and len(scored.raw) == 100


def test_a_deadline_past_after_the_first_slice_scores_exactly_one_slice() -> None:
    clock = FakeClock(1.0)
    scored = asyncio.run(score_until(clock.score, np.arange(50), 0.5, clock))  # the first slice ends at 8 s
    assert clock.slices == [(0.0, list(range(DEADLINE_SLICE)))]
    assert scored.raw.tolist() == [-i for i in range(DEADLINE_SLICE)] and scored.tokens == 10 * DEADLINE_SLICE


def test_no_slice_starts_that_would_end_past_the_deadline() -> None:
    clock = FakeClock(0.01)  # 80 ms a slice
    scored = asyncio.run(score_until(clock.score, np.arange(50), 0.3, clock))
    assert len(clock.slices) == 3  # at 0, 80 and 160 ms; one at 240 ms would end at 320 ms
    for start, part in clock.slices:
        assert start + 0.01 * len(part) <= 0.3 + 1e-9
    assert scored.raw.tolist() == [-i for i in range(3 * DEADLINE_SLICE)]  # the leading candidates, in order
    assert scored.meta["chunking"]["chunks"] == 3 * DEADLINE_SLICE  # counts add up over the slices
    assert scored.meta["chunking"]["split_documents"] == 3 and scored.meta["chunking"]["chunk_tokens"] == 8


def test_a_deadline_far_enough_scores_every_candidate_in_slices() -> None:
    clock = FakeClock(0.001)
    scored = asyncio.run(score_until(clock.score, np.arange(20), 10.0, clock))
    assert [len(part) for _, part in clock.slices] == [8, 8, 4] and scored.raw.tolist() == [-i for i in range(20)]


def test_only_a_cut_request_under_a_budget_has_a_deadline() -> None:
    budget = Options(budget_ms=200.0)
    assert deadline(10.0, a_plan("hybrid"), Options()) is None
    assert deadline(10.0, a_plan("direct"), budget) is None
    assert deadline(10.0, a_plan("hybrid"), budget) == pytest.approx(10.0 + DEADLINE_SHARE * 0.2)


# -- int8-rescore's head ------------------------------------------------------------------------------------------


def rescored_head(size: int, probabilities: bool = False) -> RescoredHead:
    return RescoredHead(SimpleNamespace(reports_probabilities=probabilities), size)  # type: ignore[arg-type]


def test_the_head_engine_scores_alone_when_the_candidates_fit_the_head() -> None:
    six = rescored_head(6)
    assert head.alone(None, 3) is None
    assert head.alone(six, 6) is six and head.alone(six, 7) is None
    meta = head.alone_meta(six, Scored(np.zeros(4), np.zeros(4), 99, {}))
    assert (meta["documents"], meta["precision"], meta["tokens"]) == (4, "fp32", 99)


def an_outcome() -> Outcome:
    """Documents 0-3 scored (3 > 1 > 0 > 2), 4 and 5 cut."""
    model = np.array([0.5, 0.7, 0.2, 0.9, np.nan, np.nan])
    scores = np.array([0.5, 0.7, 0.2, 0.9, 0.2 - 1e-6, 0.2 - 2e-6])
    return Outcome(np.array([3, 1, 0, 2, 4, 5]), scores, model, None, 40, a_plan(candidates=4, documents=6))


def test_the_head_is_scored_again_and_merged_onto_one_scale() -> None:
    asked: list[tuple[Any, list[int]]] = []

    async def score_on(engine: Any, candidates: np.ndarray) -> Scored:
        asked.append((engine, candidates.tolist()))
        exact = np.array([0.6, 0.8])  # 1 now above 3
        return Scored(exact, exact, 17, {})

    two = rescored_head(2)
    merged = asyncio.run(head.rescore(an_outcome(), Options(rescored_head=two), score_on))
    assert asked == [(two.engine, [3, 1])]
    assert merged.order.tolist() == [1, 3, 0, 2, 4, 5]
    assert merged.meta["rescored"] == {"documents": 2, "precision": "fp32", "tokens": 17}
    ordered = merged.scores[merged.order]
    assert np.all(np.diff(ordered) < 0)  # the scores agree with the order
    assert merged.model_scores[1] == pytest.approx(0.8) and merged.model_scores[3] == pytest.approx(0.6)


def test_no_second_pass_when_fused_alone_or_not_int8_rescore() -> None:
    async def score_on(engine: Any, candidates: np.ndarray) -> Scored:
        raise AssertionError("no head to score")

    outcome = an_outcome()
    assert asyncio.run(head.rescore(outcome, Options(), score_on)) is outcome
    two = rescored_head(2)
    fused = asyncio.run(head.rescore(outcome, Options(rescored_head=two, fusion="zscore"), score_on))
    assert fused.meta["rescored"]["documents"] == 0 and fused.order is outcome.order
    alone = dataclasses.replace(outcome, meta={"rescored": {"documents": 4}})
    assert asyncio.run(head.rescore(alone, Options(rescored_head=two), score_on)) is alone


# -- rank ---------------------------------------------------------------------------------------------------------


def test_rank_orders_candidates_by_the_reported_scores_then_the_rest() -> None:
    scored = Scored(np.array([1.0, 3.0, 2.0]), np.array([0.1, 0.3, 0.2]), 30, {"chunking": {"chunks": 3}})
    outcome = rank(np.array([4, 0, 2]), np.array([1, 3]), scored, None, Options(), a_plan(), {"prefilter": "bm25"})
    assert outcome.order.tolist() == [0, 2, 4, 1, 3]
    np.testing.assert_allclose(outcome.model_scores[[4, 0, 2]], [0.1, 0.3, 0.2])
    assert np.isnan(outcome.model_scores[[1, 3]]).all()
    assert list(outcome.meta) == ["prefilter", "chunking"] and outcome.tokens == 30 and outcome.first_stage is None


def test_rank_fuses_the_raw_scores_with_the_first_stages() -> None:
    scored = Scored(np.array([1.0, 3.0, 2.0]), np.array([0.1, 0.3, 0.2]), 30, {})
    first = np.array([0.0, 0.0, 9.0, 0.0, 0.0])  # document 2 first by far
    options = Options(fusion="zscore", fusion_weight=0.9)
    outcome = rank(np.array([4, 0, 2]), np.array([1, 3]), scored, first, options, a_plan(), {})
    assert outcome.order.tolist()[:3] == [2, 0, 4] and outcome.first_stage is first
    np.testing.assert_allclose(outcome.model_scores[[4, 0, 2]], [0.1, 0.3, 0.2])  # the model's own, unfused


def test_fusion_meta_names_what_was_fused() -> None:
    assert fusion_meta(Options(fusion="zscore", fusion_weight=0.3), "bm25") == {
        "method": "zscore",
        "weight": 0.3,
        "fused": ["model", "bm25"],
    }
    assert fusion_meta(Options(fusion="rrf", rrf_k=10), "first_stage_scores")["rrf_k"] == 10


def test_finalise_calibrates_unless_raw_then_cuts_by_min_score() -> None:
    outcome = an_outcome()
    outcome = dataclasses.replace(outcome, plan=a_plan("direct", 6, 6, "requested"))
    platt = ScoreMap("platt", "logit", slope=0.5, intercept=-1.0)
    calibration = Calibration("ce-fixture", {"direct": platt})
    calibrated = finalise(outcome, Options(calibration=calibration))
    np.testing.assert_allclose(calibrated.scores, platt(outcome.scores))
    raw = finalise(outcome, Options(calibration=calibration, raw_scores=True))
    assert raw.meta["calibration"]["calibrated"] is False and raw.scores is outcome.scores
    cut = finalise(outcome, Options(min_score=0.5))
    assert cut.order.tolist() == [3, 1, 0] and cut.meta["min_score"] == {"value": 0.5, "dropped": 3}


# -- describe -----------------------------------------------------------------------------------------------------


def test_describe_gives_the_plan_then_the_steps_meta() -> None:
    outcome = dataclasses.replace(an_outcome(), meta={"prefilter": "bm25"})
    described = describe(Options(strategy="auto"), outcome, elapsed_ms=12.345)
    assert list(described)[:8] == [
        "strategy", "requested_strategy", "documents", "candidates", "estimate_ms", "elapsed_ms",
        "latency_budget_ms", "reason",
    ]  # fmt: skip
    assert described["requested_strategy"] == "auto" and described["elapsed_ms"] == 12.3
    assert described["prefilter"] == "bm25"


def test_ranked_marks_cut_documents_and_gives_both_scores_only_when_fused() -> None:
    outcome = an_outcome()
    plain = ranked(outcome, None)
    assert [item.index for item in plain] == [3, 1, 0, 2, 4, 5]
    assert [item.cut_by_prefilter for item in plain] == [False] * 4 + [True] * 2
    assert all(item.model_score is None and item.first_stage_score is None for item in plain)
    fused = ranked(dataclasses.replace(outcome, first_stage=np.arange(6.0)), 5)
    assert len(fused) == 5 and (fused[0].model_score, fused[0].first_stage_score) == (0.9, 3.0)
    assert fused[4].model_score is None and fused[4].first_stage_score == 4.0


# -- the runner ---------------------------------------------------------------------------------------------------


def test_the_runner_calls_each_step_once_in_order(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def spy(owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    for name in ("estimate", "choose", "score_until", "rank", "finalise"):
        spy(runner, name)
    spy(FirstStage, "cut_scores")
    spy(head, "rescore")
    run = runner.Runner(_no_embeddings)
    options = Options(strategy="hybrid", candidates=3)
    outcome = asyncio.run(run.run(engine, QUERY, engine.query_tokens(QUERY), DOCUMENTS, options))
    # The plan runs again once the first stage's time is measured (it may shrink K).
    assert calls == ["estimate", "choose", "cut_scores", "choose", "score_until", "rank", "rescore", "finalise"]
    assert outcome.plan.candidates == 3 and np.isnan(outcome.model_scores).sum() == 2
