"""int8-rescore: every document is scored in int8, then the head of the ranking again at a faithful precision (fp32,
or bf16 on CPUs that have it), in the same request.

Pure int8 reorders the top (bench/int8_fidelity.py); the documents that reach the top are few, so scoring only them
again gives the faithful precision's head for a fraction of its cost. The head is the top max(2 x top_n,
rescore_head_min) by int8; without top_n (every document returned) it is rescore_head_min. One object,
`RescoredHead` (pipeline/costs.py), carries the head's engine, size and precision to the planner, admission and the
runner.

Scores stay on one scale and agree with the order: the head is ordered by, and reported with, its re-scored values;
the rest keep their int8 order, with their int8 scores shifted onto the head's scale by the head's own pairs (the
median difference, in logits for probabilities) and kept below the head's last score (`merge_head`).
Requests that fuse scores keep int8 only: fusion normalises over every candidate, whose re-scored values are unknown.
Requests with no more candidates than the head are scored by the head engine alone (`Reranker.run`): an int8 pass
would be redone in full. Cross-encoders and bi-encoders alike: a bi-encoder's head engine embeds the query too.

The head engine is a second engine of the same model (its own session, scheduler and score cache), so memory holds
both; the score cache budget is split between them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rerankd.backends.select import INT8_RESCORE, choose
from rerankd.config import Settings
from rerankd.engine.engine import Engine
from rerankd.engine.tokenize import Tokens
from rerankd.metrics import Metrics
from rerankd.models import ModelSpec
from rerankd.pipeline.costs import RescoredHead
from rerankd.pipeline.fusion import best_first
from rerankd.pipeline.hybrid import Options, Outcome, Reranker
from rerankd.pipeline.ranking import CUT_SCORE_STEP

_PROBABILITY_EDGE = 1e-7  # probabilities are clipped this far from 0 and 1 before taking logits


def head_size(top_n: int | None, minimum: int) -> int:
    """Documents re-scored: twice what the client sees, at least `minimum`."""
    return minimum if top_n is None else max(2 * top_n, minimum)


def embedding_model_settings(settings: Settings) -> Settings:
    """Settings for a bi-encoder loaded only as the embedding pre-filter: it has no head to re-score, so where
    int8-rescore would be chosen (configured, or by `auto`) it embeds at the head's precision."""
    choice = choose(settings, kind="bi-encoder")
    if choice.precision != INT8_RESCORE:
        return settings
    return settings.model_copy(update={"backend": choice.backend, "precision": choice.head_precision})


class HeadRescorer:
    """The head engines of the models served at int8-rescore, and the step that re-scores a request's head."""

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum
        self._heads: dict[Engine, Engine] = {}

    def load(self, spec: ModelSpec, settings: Settings, metrics: Metrics | None = None) -> Engine:
        """The engine serving `spec`: under int8-rescore the int8 one, its head engine kept here."""
        choice = choose(settings, kind=spec.kind)
        if choice.head is None:
            return Engine.load(spec, settings, metrics)
        # Two caches of half the budget each keep the model's cache memory within score_cache_mb.
        cache_mb = (settings.score_cache_mb + 1) // 2
        halved = settings.model_copy(update={"score_cache_mb": cache_mb})
        engine = Engine.load(spec, halved, metrics, choice=choice)
        # No metrics for the head engine: they are labelled by model name, which the int8 engine's gauges use.
        self._heads[engine] = Engine.load(spec, halved, choice=choice.head)
        return engine

    def warmup(self, seconds: float) -> None:
        for head in self._heads.values():
            head.warmup(seconds)

    def close(self) -> None:
        for head in self._heads.values():
            head.close()

    def describe(self, engine: Engine) -> str:
        """The engine line of /v1/models."""
        head = self._heads.get(engine)
        return engine.description if head is None else f"{engine.description}+{head.backend.precision}-head"

    def exact(self, engine: Engine) -> Engine:
        """`engine`'s head engine where it runs int8-rescore, else `engine` (the embedding pre-filter's engine)."""
        return self._heads.get(engine, engine)

    def head(self, engine: Engine, top_n: int | None) -> RescoredHead | None:
        """A request's re-scored head on `engine` (`Options.rescored_head`); None unless it runs int8-rescore."""
        head = self._heads.get(engine)
        if head is None:
            return None
        return RescoredHead(head, head_size(top_n, self.minimum), head.backend.precision)

    @staticmethod
    async def rescore(
        reranker: Reranker,
        outcome: Outcome,
        query: str,
        query_tokens: Tokens,
        documents: Sequence[str],
        options: Options,
    ) -> Outcome:
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
        # The head through the same pipeline (chunking, truncation, instruction, raw scores), directly.
        direct = dataclasses.replace(
            options,
            strategy="direct",
            budget_ms=None,
            candidates=None,
            first_stage_scores=None,
            first_stage_model=None,
            rescored_head=None,
        )
        exact = await reranker.run(head_spec.engine, query, query_tokens, [documents[i] for i in head], direct)
        probabilities = not options.raw_scores and head_spec.engine.reports_probabilities
        return merge_head(outcome, head, exact, precision=head_spec.precision, probabilities=probabilities)


def merge_head(outcome: Outcome, head: np.ndarray, exact: Outcome, *, precision: str, probabilities: bool) -> Outcome:
    """`outcome` (scored without fusion) with `head`, its leading documents, ordered and scored as `exact` (an
    outcome over just those documents, in that order) has them. The other scored documents keep their order below,
    their scores moved onto the head's scale and kept under the head's last score; cut documents stay below all."""
    scored_order = outcome.order[~np.isnan(outcome.model_scores[outcome.order])]
    tail = scored_order[len(head) :]
    cut = outcome.order[len(scored_order) :]
    head_scores = exact.model_scores.astype(np.float64)
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
    if len(cut):  # documents the pre-filter cut keep scores below every scored one (ranking.assemble's rule)
        lowest = float(model_scores[scored_order].min())
        scores[cut] = np.minimum(scores[cut], lowest - CUT_SCORE_STEP * np.arange(1, len(cut) + 1))
    meta = {**outcome.meta, "rescored": {"documents": len(head), "precision": precision, "tokens": exact.tokens}}
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
