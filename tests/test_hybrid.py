"""Hybrid ranking returns every document exactly once: scored candidates first, then the cut ones in pre-filter
order, with scores that never rise down the list."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rerankd.pipeline.fusion import best_first
from rerankd.pipeline.ranking import assemble, rank_candidates, select

scores_lists = st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(first=scores_lists, data=st.data())
def test_every_document_once_in_the_right_places(first: list[float], data: st.DataObject) -> None:
    n = len(first)
    k = data.draw(st.integers(1, n))
    model = np.array(data.draw(st.lists(st.integers(-9, 9).map(float), min_size=k, max_size=k)))
    fusion = data.draw(st.sampled_from(["none", "zscore", "rrf"]))
    first_stage = np.array(first)
    candidates, rest = select(first_stage, k)
    order, scores = rank_candidates(candidates, rest, model, first_stage, fusion=fusion, weight=0.4, rrf_k=60)

    assert sorted(order.tolist()) == list(range(n))  # every index exactly once
    assert set(order[:k].tolist()) == set(candidates.tolist())  # scored documents first
    assert order[k:].tolist() == rest.tolist()  # then the cut ones, in pre-filter order
    assert rest.tolist() == best_first(first_stage)[k:].tolist()
    assert np.all(np.diff(scores[order]) <= 0)  # scores never rise down the list
    if fusion == "none":
        np.testing.assert_array_equal(scores[candidates], model)  # the model's own scores


def test_hybrid_by_hand() -> None:
    first = np.array([0.5, 3.0, 1.0, 2.0, 0.0])  # pre-filter order: 1 3 2 0 4
    candidates, rest = select(first, 3)
    assert candidates.tolist() == [1, 3, 2] and rest.tolist() == [0, 4]
    order, scores = assemble(candidates, np.array([0.2, 0.9, 0.5]), rest)
    assert order.tolist() == [3, 2, 1, 0, 4]
    assert scores[0] < 0.2 and scores[4] < scores[0]


def test_direct_is_the_one_stage_case() -> None:
    everything = np.arange(4)
    order, scores = assemble(everything, np.array([0.1, 0.7, 0.7, 0.3]), everything[:0])
    assert order.tolist() == [1, 2, 3, 0]  # ties keep document order
    np.testing.assert_array_equal(scores, [0.1, 0.7, 0.7, 0.3])
