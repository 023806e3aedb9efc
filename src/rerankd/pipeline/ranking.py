"""Ranking a request's documents once they are scored: which are candidates, and the final order and scores.

Pure functions on numpy arrays, shared by the service (`run/rank.py`) and `eval`'s replay on cached scores,
so measured accuracy is the served ranking's accuracy. Every order follows `fusion.best_first`.
"""

from __future__ import annotations

import numpy as np

from rerankd.pipeline.fusion import FusionMethod, best_first, fuse

# Documents the pre-filter cut are listed after the scored ones; each is given a score this much below the one
# before it, so scores never rise down the list and re-sorting by score keeps the order.
CUT_SCORE_STEP = 1e-6


def select(first_stage_scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` candidates and the rest, each in pre-filter order."""
    ordered = best_first(first_stage_scores)
    return ordered[:k], ordered[k:]


def assemble(candidates: np.ndarray, candidate_scores: np.ndarray, rest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The final order and per-document scores: candidates by score (ties: document order), then `rest` as given."""
    documents = len(candidates) + len(rest)
    candidate_scores = np.asarray(candidate_scores, dtype=np.float64)
    ranked = candidates[best_first(candidate_scores, candidates)]
    scores = np.empty(documents, dtype=np.float64)
    scores[candidates] = candidate_scores
    if len(rest):
        floor = candidate_scores.min() if len(candidates) else 0.0
        scores[rest] = floor - CUT_SCORE_STEP * np.arange(1, len(rest) + 1)
    return np.concatenate([ranked, rest]).astype(np.int64), scores


def rank_candidates(
    candidates: np.ndarray,
    rest: np.ndarray,
    scores: np.ndarray,
    first_stage: np.ndarray | None,
    *,
    fusion: FusionMethod,
    weight: float,
    rrf_k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Order every document: `candidates` by their model `scores` (the raw logits, fused with `first_stage` per
    document when `fusion` asks, `weight` being the first stage's share), then the documents the pre-filter cut."""
    if fusion != "none":
        if first_stage is None:
            raise ValueError("fusion needs first-stage scores")
        scores = fuse(scores, first_stage[candidates], fusion, weight, rrf_k=rrf_k)
    return assemble(candidates, scores, rest)
