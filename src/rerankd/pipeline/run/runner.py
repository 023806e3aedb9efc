"""`Runner`: one request's steps in order, each in its own module (run/__init__.py), on the engines it is given.

`direct` is the one-stage case (every document is a candidate). The runner holds what it learns about costs: the
model time of each scoring pass that had no queue ahead, and (through the steps it lends the cost model to) BM25's
speed and characters per token. The ordering itself is `ranking.py`, which `eval` replays on cached scores, so
measured accuracy is the served ranking's.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from rerankd.engine.engine import Engine
from rerankd.engine.tokenize import Tokens
from rerankd.first_stage.corpus_stats import Bm25Statistics
from rerankd.pipeline.chunking import ChunkRule
from rerankd.pipeline.costs import CostModel
from rerankd.pipeline.planner import Costs
from rerankd.pipeline.ranking import select
from rerankd.pipeline.run import head
from rerankd.pipeline.run.first_stage import Bm25Scorer, Embeddings, FirstStage
from rerankd.pipeline.run.options import Options, Outcome
from rerankd.pipeline.run.plan import choose, cut_short, estimate
from rerankd.pipeline.run.rank import finalise, fusion_meta, rank
from rerankd.pipeline.run.score import Scored, ScoringJob, chunk_rule, deadline, score, score_until


class Runner:
    """Runs requests' steps on engines. Holds what it learns about costs; the embedding first stage is lent."""

    def __init__(
        self, embeddings: Embeddings, *, bm25_max_chars: int = 20_000, statistics: Bm25Statistics | None = None
    ) -> None:
        self.costs = CostModel()
        self.statistics = statistics or Bm25Statistics()  # default: each request's own documents
        self._bm25 = Bm25Scorer(self.statistics, self.costs, max_chars=bm25_max_chars)
        self._embeddings = embeddings

    async def run(
        self, engine: Engine, query: str, query_tokens: Tokens, documents: Sequence[str], options: Options
    ) -> Outcome:
        """Rank `documents` for `query`, whose tokens the caller has (it bounds them): the answer's order and
        scores, and what each step adds to its meta (run/describe.py says it)."""
        started = time.perf_counter()
        await self._bm25.observe(engine.spec.name, documents)
        first = FirstStage(self._bm25, self._embeddings, engine.spec.name, query, documents, options)
        rule = chunk_rule(engine, query_tokens, options)

        # Plan: what the request costs, so which strategy and K fit its budget.
        costs, wait_ms = await estimate(self.costs, engine, query_tokens, documents, options, rule, first)
        chosen = choose(options, len(documents), costs, options.strategy)

        # First stage: which documents the model scores.
        meta: dict[str, Any] = {}
        candidates, rest = np.arange(len(documents)), np.arange(0)
        if chosen.cuts:
            cut_scores, meta["prefilter"] = await first.cut_scores(chosen.strategy)
            spent_ms = 1000 * (time.perf_counter() - started)  # measured, so K shrinks if the first stage was slow
            chosen = choose(options, len(documents), costs, chosen.strategy, spent_ms)
            candidates, rest = select(cut_scores, chosen.candidates)

        # Score: on the model, or on int8-rescore's head engine alone when the candidates fit its head.
        alone = head.alone(options.rescoring, len(candidates))
        scorer = engine if alone is None else alone.engine
        ran = costs if alone is not None else dataclasses.replace(costs, rescored_head=0)  # this pass: no head in it
        until = deadline(started, chosen, options)
        scored = await self._score(scorer, query_tokens, documents, candidates, rule, options, ran, wait_ms, until)
        if alone is not None:
            meta["rescored"] = head.alone_meta(alone, scored)
        if len(scored.raw) < len(candidates):  # the deadline came first
            chosen, candidates, rest = cut_short(chosen, candidates, rest, len(scored.raw))

        # Rank (fused with the first stage's scores when asked), the head scored again, the final scores.
        first_scores = None
        if options.fusion != "none":
            first_scores = await first.scores()
            meta["fusion"] = fusion_meta(options, first.source)
        if first.statistics is not None:
            meta["bm25_statistics"] = first.statistics
        outcome = rank(candidates, rest, scored, first_scores, options, chosen, meta)
        score_head = functools.partial(self._score_head, query_tokens, documents, options)
        outcome = await head.rescore(outcome, options, score_head)
        return finalise(outcome, options)

    async def _score(
        self,
        engine: Engine,
        query: Tokens,
        documents: Sequence[str],
        candidates: np.ndarray,
        rule: ChunkRule | None,
        options: Options,
        estimate: Costs,
        wait_ms: float,
        until: float | None = None,
    ) -> Scored:
        """The score step, and what its time says about `estimate` (its model time)."""
        started = time.perf_counter()
        job = ScoringJob(engine, query, documents, rule, options, self.costs)
        scored = await score_until(functools.partial(score, job), candidates, until)
        if wait_ms == 0:  # with a queue ahead, the time says more about the queue than about the estimate
            measured_ms = 1000 * (time.perf_counter() - started)
            self.costs.learn_model(engine, estimate.model_ms(len(scored.raw)), measured_ms)
        return scored

    async def _score_head(
        self, query: Tokens, documents: Sequence[str], options: Options, engine: Engine, candidates: np.ndarray
    ) -> Scored:
        """int8-rescore's head scored again on its engine (run/head.py): every one of `candidates`, in one go."""
        rule = chunk_rule(engine, query, options)
        texts = [documents[i] for i in candidates]
        costs, wait_ms = self.costs.costs(engine, len(query), texts, chunks=rule, bm25=False)
        return await self._score(engine, query, documents, candidates, rule, options, costs, wait_ms)
