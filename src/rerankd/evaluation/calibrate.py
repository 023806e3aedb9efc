"""Fitting calibration maps (`rerankd calibrate`) and measuring calibration (`eval`'s ECE and reliability diagram).

A map turns a variant's returned score into P(relevant). Two kinds are fitted on a seeded share of the training
queries and judged on the rest by Brier score (the mean squared error of the probabilities): isotonic regression
(any monotone shape, piecewise linear between its knots) and Platt scaling (a logistic curve in the score's logit:
temperature and bias). The better one is fitted again on every query and written with what it measured.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rerankd.pipeline.calibration import ScoreMap

BINS = 10
PRECISION_TARGETS = (0.5, 0.8, 0.9)


def expected_calibration_error(probabilities: np.ndarray, relevant: np.ndarray, bins: int = BINS) -> float:
    """Sum over equal-width bins of [0, 1] of (share of pairs in the bin) x |relevant share - mean probability|."""
    return float(sum(row["count"] * row["gap"] for row in reliability(probabilities, relevant, bins))) / max(
        len(probabilities), 1
    )


def reliability(probabilities: np.ndarray, relevant: np.ndarray, bins: int = BINS) -> list[dict[str, Any]]:
    """Per non-empty bin: its range, pair count, mean probability, relevant share and the gap between them."""
    probabilities, relevant = np.asarray(probabilities, dtype=np.float64), np.asarray(relevant, dtype=np.float64)
    which = np.clip((probabilities * bins).astype(np.int64), 0, bins - 1)  # 1.0 falls in the last bin
    rows = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            mean, share = float(probabilities[inside].mean()), float(relevant[inside].mean())
            rows.append(
                {
                    "bin": [b / bins, (b + 1) / bins],
                    "count": int(inside.sum()),
                    "mean_probability": mean,
                    "relevant_share": share,
                    "gap": abs(share - mean),
                }
            )
    return rows


def precision_at(scores: np.ndarray, relevant: np.ndarray, threshold: float) -> tuple[float | None, int]:
    """Precision of the pairs scored at or above `threshold`, and how many those are."""
    kept = np.asarray(scores) >= threshold
    count = int(kept.sum())
    return (float(np.asarray(relevant)[kept].mean()) if count else None), count


def threshold_for_precision(scores: np.ndarray, relevant: np.ndarray, target: float) -> float | None:
    """The lowest score threshold whose kept pairs have at least `target` precision (most recall); None if none."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ranked, hits = np.asarray(scores, dtype=np.float64)[order], np.cumsum(np.asarray(relevant)[order])
    # Only where the next score is lower can a threshold fall (equal scores are kept or dropped together).
    ends = np.flatnonzero(np.append(ranked[1:] < ranked[:-1], True))
    good = ends[hits[ends] / (ends + 1) >= target]
    return float(ranked[good[-1]]) if len(good) else None


def brier(probabilities: np.ndarray, relevant: np.ndarray) -> float:
    return float(np.mean((np.asarray(probabilities) - np.asarray(relevant)) ** 2))


def fit_isotonic(features: np.ndarray, relevant: np.ndarray, feature: str) -> ScoreMap:
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(features, relevant)
    knots = (tuple(map(float, fitted.X_thresholds_)), tuple(map(float, fitted.y_thresholds_)))
    return ScoreMap("isotonic", feature, knots=knots)  # type: ignore[arg-type]


def fit_platt(features: np.ndarray, relevant: np.ndarray, feature: str) -> ScoreMap:
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(C=1e6, max_iter=1000).fit(features[:, None], relevant)
    return ScoreMap("platt", feature, slope=float(fitted.coef_[0, 0]), intercept=float(fitted.intercept_[0]))  # type: ignore[arg-type]


FITTERS = {"isotonic": fit_isotonic, "platt": fit_platt}


@dataclass(frozen=True)
class Labelled:
    """One variant's returned scores and relevance over every candidate of each query."""

    scores: dict[str, np.ndarray]  # by query id
    relevant: dict[str, np.ndarray]

    def pairs(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate([self.scores[q] for q in queries]), np.concatenate([self.relevant[q] for q in queries])


def fit_map(data: Labelled, feature: str, holdout: float, seed: int) -> ScoreMap:
    """Isotonic and Platt fitted on the queries outside a seeded `holdout` share, the one with the lower held-out
    Brier score fitted again on every query; its report holds both methods' held-out errors and, on every
    training query, the thresholds that give each precision in `PRECISION_TARGETS`."""
    queries = sorted(data.scores)
    random.Random(seed).shuffle(queries)
    cut = max(1, min(len(queries) - 1, round(len(queries) * holdout)))
    held, fit = queries[:cut], queries[cut:]
    fit_scores, fit_relevant = data.pairs(fit)
    held_scores, held_relevant = data.pairs(held)
    probe = ScoreMap("platt", feature)  # only its feature transform
    held_out = {}
    for method, fitter in FITTERS.items():
        score_map = fitter(probe.features(fit_scores), fit_relevant, feature)
        predicted = score_map(held_scores)
        held_out[method] = {
            "brier": round(brier(predicted, held_relevant), 6),
            "ece": round(expected_calibration_error(predicted, held_relevant), 6),
        }
    best = min(held_out, key=lambda method: held_out[method]["brier"])
    all_scores, all_relevant = data.pairs(queries)
    final = FITTERS[best](probe.features(all_scores), all_relevant, feature)
    calibrated = final(all_scores)
    thresholds = {f"{t:g}": threshold_for_precision(calibrated, all_relevant, t) for t in PRECISION_TARGETS}
    uncalibrated = round(expected_calibration_error(all_scores, all_relevant), 6) if feature == "logit" else None
    report = {
        "pairs": len(all_scores),
        "queries": len(queries),
        "relevant_pairs": int(all_relevant.sum()),
        "held_out": {"queries": len(held), **held_out},
        "uncalibrated_ece": uncalibrated,
        "thresholds_for_precision": thresholds,
    }
    return ScoreMap(final.method, final.feature, final.knots, final.slope, final.intercept, report)
