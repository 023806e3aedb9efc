"""What a request's run is given (`Options`, resolved from its fields and the server's settings) and what it returns
(`Outcome`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rerankd.engine.engine import Engine
from rerankd.pipeline.calibration import Calibration
from rerankd.pipeline.costs import RescoredHead
from rerankd.pipeline.planner import Plan
from rerankd.vocabulary import FusionMethod, Strategy


@dataclass(frozen=True)
class ChunkOptions:
    tokens: int  # 0 = what fits beside the query
    overlap: int
    max_chunks: int


@dataclass(frozen=True)
class Options:
    """One request's stages, resolved from its fields and the server's settings."""

    strategy: Strategy = "auto"
    budget_ms: float | None = None
    candidates: int | None = None
    default_candidates: int = 100
    fusion: FusionMethod = "none"
    fusion_weight: float = 0.5
    rrf_k: int = 60
    first_stage_scores: np.ndarray | None = None
    chunks: ChunkOptions | None = None  # None = truncate to the window
    raw_scores: bool = False
    truncate: bool = True
    documents_field: str = "documents"
    instruction: str | None = None  # an LLM reranker's task description (None: the model's default)
    first_stage_model: Engine | None = None  # the hybrid first stage when it is a served model (a cascade)
    first_stage_done: Callable[[], None] | None = None  # told once the cascade's first model answered (admission)
    rescored_head: RescoredHead | None = None  # int8-rescore: the head's engine, size and precision
    calibration: Calibration | None = None  # the model's score maps (`rank.finalise`)
    min_score: float | None = None  # documents whose final score is below it are dropped (`rank.finalise`)

    @property
    def rescoring(self) -> RescoredHead | None:
        """The rescored head this request runs: none when it fuses scores (fusion keeps int8 only, run/head.py)."""
        return self.rescored_head if self.fusion == "none" else None

    @property
    def cuts(self) -> bool:
        """Whether a first stage may cut the documents (so the model scores at most K of them)."""
        return self.strategy in ("hybrid", "bi-encoder") or (self.strategy == "auto" and self.budget_ms is not None)

    @property
    def most_scored(self) -> int | None:
        """The most documents the model may score, before planning: K when a first stage cuts, else all (None)."""
        return self.candidates or self.default_candidates if self.cuts else None


@dataclass(frozen=True)
class Outcome:
    order: np.ndarray  # every document index, best first
    scores: np.ndarray  # per document, what the order follows (fused, or the model's)
    model_scores: np.ndarray  # per document, the model's own score; NaN where the first stage cut it
    first_stage: np.ndarray | None  # per document, when fusion used one
    tokens: int
    plan: Plan
    meta: dict[str, Any] = field(default_factory=dict)
