"""Score fusion: one ranking from the model's scores and a first stage's scores (BM25 or the client's own), by
`zscore` or `rrf`, `weight` being the first stage's share; docs/strategies.md (Score fusion) states both rules.
"""

from __future__ import annotations

import numpy as np

from rerankd.vocabulary import FusionMethod


def zscore(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    spread = scores.std()
    return np.zeros_like(scores) if spread == 0 else (scores - scores.mean()) / spread


def best_first(scores: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
    """Positions by score, best first; equal scores keep the order of `ids` (default: position). The one rule
    every ranking in rerankd follows."""
    scores = np.asarray(scores, dtype=np.float64)
    return np.lexsort((np.arange(len(scores)) if ids is None else ids, -scores))


def ranks(scores: np.ndarray) -> np.ndarray:
    """1 for the best score; equal scores keep document order."""
    order = best_first(scores)
    positions = np.empty(len(scores), dtype=np.int64)
    positions[order] = np.arange(1, len(scores) + 1)
    return positions


def fuse(model: np.ndarray, first: np.ndarray, method: FusionMethod, weight: float, *, rrf_k: int = 60) -> np.ndarray:
    """The fused score per document; `method == "none"` returns the model's scores unchanged."""
    if len(model) != len(first):
        raise ValueError(f"fusion needs one first-stage score per model score ({len(model)} != {len(first)})")
    if method == "none":
        return np.asarray(model, dtype=np.float64)
    if method == "zscore":
        return (1 - weight) * zscore(model) + weight * zscore(first)
    if method == "rrf":
        return (1 - weight) / (rrf_k + ranks(model)) + weight / (rrf_k + ranks(first))
    raise ValueError(f"fusion: unknown method {method!r}")
