"""int8-rescore's head within a request (why and how: pipeline/rescore.py): which engine scores the candidates, and
the head of the ranking scored again by the head engine, merged onto one scale with the rest.

Requests with no more candidates than the head are scored by the head engine alone: an int8 pass would be redone
in full. Requests that fuse scores keep int8 only: fusion normalises over every candidate, whose re-scored values
are unknown.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from rerankd.engine.engine import Engine
from rerankd.pipeline.costs import RescoredHead
from rerankd.pipeline.fusion import best_first
from rerankd.pipeline.ranking import CUT_SCORE_STEP
from rerankd.pipeline.run.options import Options, Outcome
from rerankd.pipeline.run.score import Scored

_PROBABILITY_EDGE = 1e-7  # probabilities are clipped this far from 0 and 1 before taking logits
_ALONE = "no more candidates than the head: the head engine alone, no int8 pass"

# Scores documents (indices into the request's) on an engine, in the order given: the runner's score step.
ScoreOn = Callable[[Engine, np.ndarray], Awaitable[Scored]]


def alone(head: RescoredHead | None, candidates: int) -> RescoredHead | None:
    """`head` when its engine scores the candidates alone (they are no more than the head), else None."""
    return head if head is not None and candidates <= head.size else None


def alone_meta(head: RescoredHead, scored: Scored) -> dict[str, Any]:
    """`meta.rescored` of a request the head engine scored alone."""
    return {"documents": len(scored.raw), "precision": head.precision, "tokens": scored.tokens, "reason": _ALONE}


async def rescore(outcome: Outcome, options: Options, score_on: ScoreOn) -> Outcome:
    """`outcome` with its head re-scored where the request has a `rescored_head`; unchanged otherwise, and where
    the head engine scored every candidate already (`meta.rescored` is set)."""
    head_spec = options.rescored_head
    if head_spec is None or "rescored" in outcome.meta:
        return outcome
    if options.fusion != "none":
        skipped = {"documents": 0, "reason": "fusion normalises over every candidate: int8 scores only"}
        return dataclasses.replace(outcome, meta={**outcome.meta, "rescored": skipped})
    scored = int(np.count_nonzero(~np.isnan(outcome.model_scores)))  # scored documents lead the order
    head = outcome.order[: min(head_spec.size, scored)]
    if len(head) == 0:
        return outcome
    # The head through the same scoring (chunking, truncation, instruction, raw scores), on the head engine.
    exact = await score_on(head_spec.engine, head)
    probabilities = not options.raw_scores and head_spec.engine.reports_probabilities
    return merge_head(
        outcome, head, exact.final, tokens=exact.tokens, precision=head_spec.precision, probabilities=probabilities
    )


def merge_head(
    outcome: Outcome, head: np.ndarray, exact: np.ndarray, *, tokens: int, precision: str, probabilities: bool
) -> Outcome:
    """`outcome` (scored without fusion) with `head`, its leading documents, ordered and scored by `exact` (their
    scores on the head engine, in that order, `tokens` spent). The other scored documents keep their order below,
    their scores moved onto the head's scale and kept under the head's last score; cut documents stay below all."""
    scored_order = outcome.order[~np.isnan(outcome.model_scores[outcome.order])]
    tail = scored_order[len(head) :]
    cut = outcome.order[len(scored_order) :]
    head_scores = np.asarray(exact, dtype=np.float64)
    head_order = best_first(head_scores)
    model_scores = outcome.model_scores.copy()
    model_scores[head] = head_scores
    model_scores[tail] = onto_head_scale(
        outcome.model_scores[head].astype(np.float64),
        head_scores,
        outcome.model_scores[tail].astype(np.float64),
        floor=float(head_scores.min()),
        probabilities=probabilities,
    )
    order = np.concatenate([head[head_order], tail, cut])
    scores = outcome.scores.astype(np.float64)  # a copy
    scores[scored_order] = model_scores[scored_order]
    if len(cut):  # documents the first stage cut keep scores below every scored one (ranking.assemble's rule)
        lowest = float(model_scores[scored_order].min())
        scores[cut] = np.minimum(scores[cut], lowest - CUT_SCORE_STEP * np.arange(1, len(cut) + 1))
    meta = {**outcome.meta, "rescored": {"documents": len(head), "precision": precision, "tokens": tokens}}
    return dataclasses.replace(outcome, order=order, scores=scores, model_scores=model_scores, meta=meta)


def onto_head_scale(
    head_int8: np.ndarray, head_exact: np.ndarray, tail_int8: np.ndarray, *, floor: float, probabilities: bool
) -> np.ndarray:
    """The tail's int8 scores (best first) on the head's scale: shifted by the median of the head's own
    (exact - int8) differences, then each kept strictly below the previous one and below `floor`, so the returned
    scores never contradict the returned order. Probabilities are shifted as logits and stay probabilities."""
    if len(tail_int8) == 0:
        return tail_int8
    forward, back = (_logit, _sigmoid) if probabilities else (_same, _same)
    shift = float(np.median(forward(head_exact) - forward(head_int8)))
    mapped = back(forward(tail_int8) + shift)
    ceiling = floor
    for i, value in enumerate(mapped):
        mapped[i] = ceiling = min(value, np.nextafter(ceiling, -np.inf))
    return mapped


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _PROBABILITY_EDGE, 1 - _PROBABILITY_EDGE)
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _same(x: np.ndarray) -> np.ndarray:
    return x
