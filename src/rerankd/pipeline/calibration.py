"""Calibrated scores: a monotone map from the score a strategy returns to the probability that the document is
relevant, fitted on labelled data by `rerankd calibrate` (evaluation/calibrate.py) and loaded per model with the
`calibration` setting. A map is monotone, so the order never changes; only what `relevance_score` means does.

A returned score depends on the strategy that ran, so a file holds one map per variant, named by a key:
`direct`, `hybrid:30` (or `hybrid`, for any K), `direct+zscore:0.5`, `hybrid:30+zscore:0.5`. Maps of fused
variants were fitted with the server's BM25 as the first stage; a request that fuses its own `first_stage_scores`
or a first-stage model is left uncalibrated (its meta says why).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from rerankd.errors import RerankdError
from rerankd.vocabulary import FUSION_METHODS, ExecutedStrategy

FORMAT = "rerankd-calibration/1"
_EPSILON = 1e-9  # probability-like scores are clipped this far inside (0, 1) before their logit is taken
_STRATEGIES = "|".join(map(re.escape, get_args(ExecutedStrategy)))
_FUSIONS = "|".join(method for method in FUSION_METHODS if method != "none")
_KEY = re.compile(rf"^({_STRATEGIES})(?::(\d+))?(?:\+({_FUSIONS}):([0-9.]+))?$")


def variant_key(strategy: str, candidates: int | None, fusion: str = "none", weight: float = 0.0) -> str:
    """The name of what ran: `strategy[:K][+fusion:weight]` (direct has no K)."""
    key = strategy if strategy == "direct" or candidates is None else f"{strategy}:{candidates}"
    return key if fusion == "none" else f"{key}+{fusion}:{weight:g}"


def parse_key(key: str) -> tuple[str, int | None, str, float]:
    """(strategy, K or None, fusion, weight) of a variant key; ValueError naming the grammar otherwise."""
    match = _KEY.match(key)
    if match is None or (match[1] == "direct" and match[2]) or (match[1] != "direct" and not match[2] and match[3]):
        raise ValueError(
            f"{key!r}: a variant is direct, hybrid:K or bi-encoder:K, optionally +zscore:W or +rrf:W "
            "(e.g. direct, hybrid:30, hybrid:30+zscore:0.5); unfused hybrid and bi-encoder may leave K out"
        )
    weight = float(match[4]) if match[4] else 0.0
    if not 0 <= weight <= 1:
        raise ValueError(f"{key!r}: the fusion weight must be between 0 and 1")
    return match[1], int(match[2]) if match[2] else None, match[3] or "none", weight


@dataclass(frozen=True)
class ScoreMap:
    """score -> P(relevant), non-decreasing. `feature` is what the fit saw: the logit of a probability-like score
    (the sigmoid a cross-encoder returns), or a fused score as it is."""

    method: Literal["isotonic", "platt"]
    feature: Literal["logit", "identity"]
    knots: tuple[tuple[float, ...], tuple[float, ...]] = ((), ())  # isotonic: (x, y), linear in between
    slope: float = 1.0  # platt: sigmoid(slope * feature + intercept)
    intercept: float = 0.0
    report: dict[str, Any] = field(default_factory=dict, compare=False)  # how it was fitted and what it measured

    def features(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        if self.feature == "identity":
            return scores
        clipped = np.clip(scores, _EPSILON, 1 - _EPSILON)
        return np.log(clipped / (1 - clipped))

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        x = self.features(scores)
        if self.method == "isotonic":
            return np.interp(x, self.knots[0], self.knots[1])
        return 1 / (1 + np.exp(-(self.slope * x + self.intercept)))

    def to_json(self) -> dict[str, Any]:
        fitted: dict[str, Any] = (
            {"x": list(self.knots[0]), "y": list(self.knots[1])}
            if self.method == "isotonic"
            else {"slope": self.slope, "intercept": self.intercept}
        )
        return {"method": self.method, "feature": self.feature, **fitted, **self.report}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> ScoreMap:
        method, feature = record["method"], record["feature"]
        if method not in ("isotonic", "platt") or feature not in ("logit", "identity"):
            raise ValueError(f"unknown map {method}/{feature}")
        known = {"method", "feature", "x", "y", "slope", "intercept"}
        report = {key: value for key, value in record.items() if key not in known}
        if method == "platt":
            slope, intercept = float(record["slope"]), float(record["intercept"])
            return cls(method, feature, slope=slope, intercept=intercept, report=report)
        x, y = (tuple(float(v) for v in record[axis]) for axis in ("x", "y"))
        if not x or len(x) != len(y) or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
            raise ValueError("isotonic knots must be non-empty, of equal length and non-decreasing")
        return cls(method, feature, knots=(x, y), report=report)


@dataclass(frozen=True)
class Calibration:
    """One model's maps, by variant key."""

    model: str
    maps: dict[str, ScoreMap]
    meta: dict[str, Any] = field(default_factory=dict, compare=False)  # what it was fitted on

    def save(self, path: Path) -> None:
        record = {
            "format": FORMAT,
            "model": self.model,
            **self.meta,
            "maps": {key: score_map.to_json() for key, score_map in self.maps.items()},
        }
        Path(path).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        try:
            record = json.loads(Path(path).read_text(encoding="utf-8"))
            if record.get("format") != FORMAT:
                raise ValueError(f"not a calibration file of `rerankd calibrate` ({FORMAT})")
            maps = {}
            for key, value in record["maps"].items():
                parse_key(key)
                maps[key] = ScoreMap.from_json(value)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RerankdError(f"calibration: cannot use {path}: {exc}") from None
        meta = {key: value for key, value in record.items() if key not in ("format", "model", "maps")}
        return cls(str(record["model"]), maps, meta)

    def select(
        self, strategy: str, candidates: int | None, fusion: str, weight: float, first_stage: str | None
    ) -> tuple[ScoreMap | None, dict[str, Any]]:
        """The map for what ran, and what `meta.rerankd.calibration` says about it."""
        fitted = ", ".join(self.maps)
        if fusion != "none" and first_stage != "bm25":
            reason = f"fused with {first_stage}; the fused maps were fitted with the server's BM25 ({fitted})"
            return None, {"calibrated": False, "reason": reason}
        keys = [variant_key(strategy, candidates, fusion, weight)]
        if strategy != "direct" and fusion == "none":
            keys.append(strategy)  # an unfused pre-filter's map may hold for any K
        for key in keys:
            if key in self.maps:
                score_map = self.maps[key]
                return score_map, {"calibrated": True, "fitted_for": key, "method": score_map.method}
        return None, {"calibrated": False, "reason": f"no map for {keys[0]} (fitted: {fitted})"}
