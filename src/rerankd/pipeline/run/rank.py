"""The rank step: every document's place and score from the scored candidates (fused with the first stage's scores
when the request asks, `ranking.rank_candidates`), and the answer's final scores (`finalise`: calibration, then the
`min_score` cut)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rerankd.pipeline.planner import Plan
from rerankd.pipeline.ranking import rank_candidates
from rerankd.pipeline.run.options import Options, Outcome
from rerankd.pipeline.run.score import Scored


def fusion_meta(options: Options, source: str) -> dict[str, Any]:
    """`meta.fusion`: how the model's scores and the first stage's (from `source`) were fused."""
    return {
        "method": options.fusion,
        "weight": options.fusion_weight,
        "fused": ["model", source],
        **({"rrf_k": options.rrf_k} if options.fusion == "rrf" else {}),
    }


def rank(
    candidates: np.ndarray,
    rest: np.ndarray,
    scored: Scored,
    first_stage: np.ndarray | None,
    options: Options,
    chosen: Plan,
    meta: dict[str, Any],
) -> Outcome:
    """The outcome: `candidates` (scored, in `scored`) ranked first, by fused raw logits when `first_stage` scores
    are given, else by the scores the request reports; then `rest`, in the order given."""
    fusing = first_stage is not None
    order, scores = rank_candidates(
        candidates,
        rest,
        scored.raw if fusing else scored.final,
        first_stage,
        fusion=options.fusion,
        weight=options.fusion_weight,
        rrf_k=options.rrf_k,
    )
    model_scores = np.full(len(candidates) + len(rest), np.nan)
    model_scores[candidates] = scored.final
    return Outcome(order, scores, model_scores, first_stage, scored.tokens, chosen, {**meta, **scored.meta})


def finalise(outcome: Outcome, options: Options) -> Outcome:
    """The answer's scores, after any re-scoring of the head: probabilities where the model's calibration has a map
    for what ran (unless the client asked for raw scores), then the `min_score` cut."""
    meta, scores, order = dict(outcome.meta), outcome.scores, outcome.order
    if options.calibration is not None:
        fused = meta.get("fusion", {}).get("fused", [None, None])[1]
        plan = outcome.plan
        score_map, meta["calibration"] = options.calibration.select(
            plan.strategy, plan.candidates, options.fusion, options.fusion_weight, fused
        )
        if score_map is not None and options.raw_scores:
            score_map, meta["calibration"] = None, {"calibrated": False, "reason": "raw_scores asks for raw scores"}
        if score_map is not None:
            scores = score_map(scores)
    if options.min_score is not None:
        kept = scores[order] >= options.min_score
        meta["min_score"] = {"value": options.min_score, "dropped": int(np.count_nonzero(~kept))}
        order = order[kept]
    return dataclasses.replace(outcome, order=order, scores=scores, meta=meta)
