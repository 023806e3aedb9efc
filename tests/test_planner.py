"""The planner is pure logic: with a stubbed speed figure, its choices follow the budget."""

from __future__ import annotations

import pytest

from rerankd.pipeline.planner import HEADROOM, MIN_CANDIDATES, Costs, plan

# 100 pairs per second: one pair costs 10 ms, 1,000 documents 10 s.
SPEED = Costs(pairs_per_second=100.0)


def test_no_budget_means_direct() -> None:
    chosen = plan("auto", 1000, SPEED)
    assert (chosen.strategy, chosen.candidates, chosen.reason) == ("direct", 1000, "no budget")
    assert chosen.estimate_ms == pytest.approx(10_000)


def test_direct_when_it_fits_the_budget() -> None:
    chosen = plan("auto", 50, SPEED, budget_ms=1000)  # 500 ms of model time, under 850 ms usable
    assert (chosen.strategy, chosen.candidates) == ("direct", 50)


def test_hybrid_with_the_largest_k_that_fits() -> None:
    chosen = plan("auto", 1000, SPEED, budget_ms=1000)
    assert chosen.strategy == "hybrid"
    assert chosen.candidates == int(1000 * HEADROOM / 10)  # 85 pairs of 10 ms in 850 ms
    assert chosen.estimate_ms <= 1000 * HEADROOM


def test_time_already_spent_shrinks_k() -> None:
    before = plan("hybrid", 1000, SPEED, budget_ms=1000)
    after = plan("hybrid", 1000, SPEED, budget_ms=1000, spent_ms=250)
    assert after.candidates == before.candidates - 25
    assert after.estimate_ms == pytest.approx(250 + 10 * after.candidates)


def test_fixed_costs_and_chunks_count() -> None:
    chosen = plan("auto", 1000, Costs(100.0, pairs_per_document=2.0, fixed_ms=50.0), budget_ms=1000)
    assert chosen.candidates == int((1000 * HEADROOM - 50) / 20)


def test_budget_k_grows_with_speed() -> None:
    slow, fast = (plan("auto", 1000, Costs(speed), budget_ms=1000).candidates for speed in (50.0, 400.0))
    assert slow < fast


def test_a_tiny_budget_scores_the_minimum() -> None:
    chosen = plan("auto", 1000, SPEED, budget_ms=1)
    assert (chosen.strategy, chosen.candidates) == ("hybrid", MIN_CANDIDATES)
    assert chosen.estimate_ms > 1  # reported honestly as over the budget
    assert "budget too small" in chosen.reason


def test_explicit_strategies() -> None:
    assert plan("direct", 1000, SPEED, budget_ms=1).candidates == 1000
    assert plan("hybrid", 1000, SPEED, default_candidates=100).candidates == 100
    assert plan("bi-encoder", 1000, SPEED, candidates=30).strategy == "bi-encoder"
    assert plan("bi-encoder", 1000, SPEED, candidates=30).candidates == 30
    assert plan("hybrid", 1000, SPEED, candidates=500, budget_ms=1000).candidates == 85  # the budget wins


def test_candidates_cap_auto_and_k_at_least_n_is_direct() -> None:
    capped = plan("auto", 1000, SPEED, candidates=40)
    assert (capped.strategy, capped.candidates) == ("hybrid", 40)
    everything = plan("hybrid", 20, SPEED, candidates=50)
    assert (everything.strategy, everything.candidates) == ("direct", 20)
