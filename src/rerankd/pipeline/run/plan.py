"""The plan step: what the request will cost, which strategy and K fit its budget (`planner.plan`), and the plan
again once the first stage's time is measured or the deadline stopped scoring early."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from rerankd.engine.engine import Engine
from rerankd.engine.tokenize import Tokens
from rerankd.pipeline.chunking import ChunkRule
from rerankd.pipeline.costs import CostModel
from rerankd.pipeline.planner import Costs, Plan, plan
from rerankd.pipeline.run.first_stage import FirstStage
from rerankd.pipeline.run.options import Options
from rerankd.vocabulary import Strategy


async def estimate(
    costs: CostModel,
    engine: Engine,
    query: Tokens,
    documents: Sequence[str],
    options: Options,
    rule: ChunkRule | None,
    first: FirstStage,
) -> tuple[Costs, float]:
    """The request's costs on `engine` (with int8-rescore's head, and BM25 when fusion needs it computed), and the
    part of them that is queue wait. A cascade's first model scores every document before the main one: its time
    is the first stage's."""
    fusing = options.fusion != "none"
    bm25 = fusing and not first.known and not first.model
    request, wait_ms = costs.costs(engine, len(query), documents, chunks=rule, bm25=bm25, head=options.rescoring)
    if first.model is not None:
        first_query = await first.query_tokens(first.model)
        first_costs, _ = costs.costs(first.model, len(first_query), documents, chunks=None, bm25=False)
        first_stage_ms = first_costs.fixed_ms + first_costs.model_ms(len(documents))
        request = dataclasses.replace(request, first_stage_ms=first_stage_ms)
    return request, wait_ms


def choose(options: Options, documents: int, costs: Costs, strategy: Strategy, spent_ms: float = 0.0) -> Plan:
    """The plan for `strategy` over `documents`; `spent_ms`: the first stage's measured time, once it ran (so K
    shrinks if it was slow)."""
    return plan(
        strategy,
        documents,
        costs,
        budget_ms=options.budget_ms,
        candidates=options.candidates,
        default_candidates=options.default_candidates,
        spent_ms=spent_ms,
    )


def cut_short(
    chosen: Plan, candidates: np.ndarray, rest: np.ndarray, scored: int
) -> tuple[Plan, np.ndarray, np.ndarray]:
    """The plan as it ran, its candidates and the rest, when the deadline stopped scoring after the first `scored`
    candidates: the unscored join the cut ones ahead of them, still in first-stage order."""
    reason = f"{chosen.reason}; the deadline stopped scoring after {scored}"
    rest = np.concatenate([candidates[scored:], rest])
    return dataclasses.replace(chosen, candidates=scored, reason=reason), candidates[:scored], rest
