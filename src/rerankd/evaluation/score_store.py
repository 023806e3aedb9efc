"""Model scores kept on disk between evaluation runs: scoring every candidate is the slow part of `eval` and
`calibrate`, and the same (model, query, document) pair always scores the same."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class ScoreStore:
    """Scores by model (its content revision), query text and document id; a JSON file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._scores: dict[str, dict[str, dict[str, float]]] = {}
        if path is not None and path.is_file():
            self._scores = json.loads(path.read_text(encoding="utf-8"))
        self.hits = self.misses = 0

    def get(self, model: str, query: str, doc_ids: Sequence[str]) -> np.ndarray | None:
        known = self._scores.get(model, {}).get(query, {})
        if not all(doc in known for doc in doc_ids):
            self.misses += 1
            return None
        self.hits += 1
        return np.array([known[doc] for doc in doc_ids], dtype=np.float64)

    def put(self, model: str, query: str, doc_ids: Sequence[str], scores: np.ndarray) -> None:
        self._scores.setdefault(model, {}).setdefault(query, {}).update(
            zip(doc_ids, (float(score) for score in scores), strict=True)
        )

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text(json.dumps(self._scores), encoding="utf-8")
            partial.replace(self.path)
