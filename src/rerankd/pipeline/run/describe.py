"""The describe step: an outcome as the answer says it, its ranked results (`top_n` of them) and what ran (the
response's `meta.rerankd`, which the `X-Rerankd-*` headers are made from)."""

from __future__ import annotations

from typing import Any

import numpy as np

from rerankd.pipeline.run.options import Options, Outcome
from rerankd.pipeline.types import Ranked


def ranked(outcome: Outcome, top_n: int | None) -> list[Ranked]:
    """The best `top_n` documents (all when None); a fused answer also gives each one's model and first-stage
    scores, and every answer marks the documents the first stage cut."""
    fused = outcome.first_stage is not None
    cut = np.isnan(outcome.model_scores)
    return [
        Ranked(
            int(i),
            float(outcome.scores[i]),
            model_score=None if not fused or cut[i] else float(outcome.model_scores[i]),
            first_stage_score=None if not fused else float(outcome.first_stage[i]),  # type: ignore[index]
            cut_by_prefilter=bool(cut[i]),
        )
        for i in outcome.order[:top_n]
    ]


def describe(options: Options, outcome: Outcome, *, elapsed_ms: float) -> dict[str, Any]:
    """What ran: the plan, then what each step added to the outcome's meta."""
    plan = outcome.plan
    return {
        "strategy": plan.strategy,
        "requested_strategy": options.strategy,
        "documents": plan.documents,
        "candidates": plan.candidates,
        "estimate_ms": plan.estimate_ms,
        "elapsed_ms": round(elapsed_ms, 1),
        "latency_budget_ms": plan.budget_ms,
        "reason": plan.reason,
        **outcome.meta,
    }
