"""int8-rescore: every document is scored in int8, then the head of the ranking again in fp32, in the same request.

Pure int8 is ~1.45x (AVX2) to ~2.1x (VNNI) fp32 but reorders the top (bench/int8_fidelity.py: top-10 overlap 0.87
vs fp32 on debian-minilm-ce); the documents that reach the top are few, so scoring only them again in fp32 gives
fp32's head for a fraction of fp32's cost. The head is the top max(2 x top_n, rescore_head_min) by int8; without
top_n (every document returned) it is rescore_head_min. The head is ordered by, and reported with, fp32 scores; the
rest keep their int8 order and int8 scores below it (an int8 score there may exceed the lowest fp32 score above it).
Requests that fuse scores keep int8 only: fusion normalises over every candidate, whose fp32 scores are unknown.
Requests with no more candidates than the head are scored by the fp32 twin alone (`Reranker.run`): an int8 pass
would be redone in full. Cross-encoders and bi-encoders alike: a bi-encoder's twin embeds the query in fp32 too.
The planner and admission count the twin's work (`ExactHead` in `Options`, `Costs.head`).

The fp32 twin is a second engine of the same model (its own ONNX session, scheduler and score cache), so memory
holds both sessions; the score cache budget is split between them.
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
from rerankd.pipeline.costs import ExactHead
from rerankd.pipeline.hybrid import Options, Outcome, Reranker
from rerankd.pipeline.ranking import assemble


def head_size(top_n: int | None, minimum: int) -> int:
    """Documents re-scored in fp32: twice what the client sees, at least `minimum`."""
    return minimum if top_n is None else max(2 * top_n, minimum)


def prefilter_settings(settings: Settings) -> Settings:
    """Settings for a bi-encoder loaded only as the embedding pre-filter: it has no head to re-score, so where
    int8-rescore would be chosen (configured, or `auto` with int8 dot products) it embeds in fp32."""
    if choose(settings, kind="bi-encoder").precision != INT8_RESCORE:
        return settings
    return settings.model_copy(update={"precision": "fp32"})


class HeadRescorer:
    """The fp32 twins of the engines served at int8-rescore, and the step that re-scores a request's head."""

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum
        self._twins: dict[Engine, Engine] = {}

    def load(self, spec: ModelSpec, settings: Settings, metrics: Metrics | None = None) -> Engine:
        """The engine serving `spec`: under int8-rescore the int8 one, its fp32 twin kept here."""
        if choose(settings, kind=spec.kind).precision != INT8_RESCORE:
            return Engine.load(spec, settings, metrics)
        # Two caches of half the budget each keep the model's cache memory within score_cache_mb.
        cache_mb = (settings.score_cache_mb + 1) // 2
        engine = Engine.load(spec, settings.model_copy(update={"score_cache_mb": cache_mb}), metrics)
        exact = {"precision": "fp32", "backend": "onnx", "device": "cpu", "score_cache_mb": cache_mb}
        # No metrics for the twin: they are labelled by model name, which the int8 engine's gauges already use.
        self._twins[engine] = Engine.load(spec, settings.model_copy(update=exact))
        return engine

    def warmup(self, seconds: float) -> None:
        for twin in self._twins.values():
            twin.warmup(seconds)

    def close(self) -> None:
        for twin in self._twins.values():
            twin.close()

    def describe(self, engine: Engine) -> str:
        """The engine line of /v1/models."""
        return f"{engine.description}+fp32-head" if engine in self._twins else engine.description

    def exact(self, engine: Engine) -> Engine:
        """`engine`'s fp32 twin where it runs int8-rescore, else `engine` (the embedding pre-filter's engine)."""
        return self._twins.get(engine, engine)

    def head(self, engine: Engine, top_n: int | None) -> ExactHead | None:
        """A request's fp32 head on `engine` (`Options.exact_head`); None unless it runs int8-rescore."""
        twin = self._twins.get(engine)
        return None if twin is None else ExactHead(twin, head_size(top_n, self.minimum))

    @staticmethod
    async def rescore(
        reranker: Reranker,
        outcome: Outcome,
        query: str,
        query_tokens: Tokens,
        documents: Sequence[str],
        options: Options,
    ) -> Outcome:
        """`outcome` with its head re-scored in fp32 where the request has an `exact_head`; unchanged otherwise,
        and where the twin scored every candidate already (`meta.rescored` is set)."""
        if options.exact_head is None or "rescored" in outcome.meta:
            return outcome
        if options.fusion != "none":
            skipped = {"documents": 0, "reason": "fusion normalises over every candidate: int8 scores only"}
            return dataclasses.replace(outcome, meta={**outcome.meta, "rescored": skipped})
        scored = int(np.count_nonzero(~np.isnan(outcome.model_scores)))  # scored documents lead the order
        head = outcome.order[: min(options.exact_head.size, scored)]
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
            exact_head=None,
        )
        twin = options.exact_head.engine
        exact = await reranker.run(twin, query, query_tokens, [documents[i] for i in head], direct)
        return merge_head(outcome, head, exact)


def merge_head(outcome: Outcome, head: np.ndarray, exact: Outcome) -> Outcome:
    """`outcome` (scored without fusion) with `head`, its leading documents, ordered and scored as `exact` (an
    outcome over just those documents, in that order) has them; the rest stay below in their order."""
    model_scores = outcome.model_scores.copy()
    model_scores[head] = exact.model_scores
    scored = ~np.isnan(model_scores[outcome.order])
    # Documents the pre-filter cut keep scores below every scored one (assemble's rule) after the head changed.
    _, scores = assemble(outcome.order[scored], model_scores[outcome.order[scored]], outcome.order[~scored])
    order = np.concatenate([head[exact.order], outcome.order[len(head) :]])
    meta = {**outcome.meta, "rescored": {"documents": len(head), "precision": "fp32", "tokens": exact.tokens}}
    return dataclasses.replace(outcome, order=order, scores=scores, model_scores=model_scores, meta=meta)
