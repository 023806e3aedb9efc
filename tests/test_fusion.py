"""Score fusion on tiny cases computed by hand, and the shared ordering rule."""

from __future__ import annotations

import numpy as np
import pytest

from rerankd.pipeline.fusion import best_first, fuse, ranks, zscore


def test_zscore_by_hand() -> None:
    np.testing.assert_allclose(zscore(np.array([1.0, 2.0, 3.0])), [-1.224745, 0.0, 1.224745], atol=1e-6)
    np.testing.assert_array_equal(zscore(np.array([5.0, 5.0])), [0.0, 0.0])  # no spread, no signal


def test_zscore_fusion_ranking_by_hand() -> None:
    # model logits favour document 0; BM25 favours document 2.
    model = np.array([3.0, 1.0, 2.0])  # z = [1.2247, -1.2247, 0]
    bm25 = np.array([0.0, 5.0, 10.0])  # z = [-1.2247, 0, 1.2247]
    fused = fuse(model, bm25, "zscore", 0.5)
    # 0.5 * z(model) + 0.5 * z(bm25) = [0, -0.6124, 0.6124]
    np.testing.assert_allclose(fused, [0.0, -0.612372, 0.612372], atol=1e-6)
    assert list(best_first(fused)) == [2, 0, 1]
    assert list(best_first(fuse(model, bm25, "zscore", 0.0))) == [0, 2, 1]  # the model alone
    assert list(best_first(fuse(model, bm25, "zscore", 1.0))) == [2, 1, 0]  # the first stage alone


def test_rrf_ranking_by_hand() -> None:
    model = np.array([0.9, 0.1, 0.5, 0.3])  # ranks 1 4 2 3
    first = np.array([1.0, 4.0, 2.0, 3.0])  # ranks 4 1 3 2
    fused = fuse(model, first, "rrf", 0.5, rrf_k=1)
    expected = [0.5 / 2 + 0.5 / 5, 0.5 / 5 + 0.5 / 2, 0.5 / 3 + 0.5 / 4, 0.5 / 4 + 0.5 / 3]
    np.testing.assert_allclose(fused, expected)
    assert list(best_first(fused)) == [0, 1, 2, 3]  # two exact ties, kept in document order


def test_ranks_and_ties_keep_document_order() -> None:
    assert list(ranks(np.array([0.2, 0.9, 0.2]))) == [2, 1, 3]
    assert list(best_first(np.array([1.0, 1.0, 2.0]), ids=np.array([9, 3, 5]))) == [2, 1, 0]


def test_none_returns_the_model_scores_and_lengths_must_match() -> None:
    np.testing.assert_array_equal(fuse(np.array([1.0, 2.0]), np.array([0.0, 0.0]), "none", 0.5), [1.0, 2.0])
    with pytest.raises(ValueError, match="one first-stage score per model score"):
        fuse(np.array([1.0]), np.array([1.0, 2.0]), "zscore", 0.5)
