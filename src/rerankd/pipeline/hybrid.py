"""Multi-stage reranking: plan, pre-filter to K candidates, score them with the model, fuse, assemble.

`direct` is the one-stage case (every document is a candidate). This module runs the stages on engines; the
ordering itself is `ranking.py`, which `eval` replays on cached scores, so measured accuracy is the served ranking's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rerankd.engine.engine import Engine, Prepared
from rerankd.engine.tokenize import Tokens
from rerankd.errors import PayloadTooLarge
from rerankd.pipeline import chunking
from rerankd.pipeline.admission import Stage
from rerankd.pipeline.calibration import Calibration
from rerankd.pipeline.costs import CostModel, RescoredHead
from rerankd.pipeline.planner import Costs, Plan, plan
from rerankd.pipeline.ranking import rank_candidates, select
from rerankd.prefilter import EmbeddingPrefilter, bm25_scores
from rerankd.prefilter.corpus_stats import Bm25Statistics
from rerankd.vocabulary import FusionMethod, Strategy

# With a latency budget, a pre-filtered request scores its candidates best-first in slices of this many documents
# and starts no slice that would end after this share of the budget (the rest is for the answer itself).
DEADLINE_SLICE = 8
DEADLINE_SHARE = 0.92


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
    first_stage_model: Engine | None = None  # the hybrid pre-filter when it is a served model (a cascade)
    first_stage_done: Callable[[], None] | None = None  # told once the cascade's first model answered (admission)
    rescored_head: RescoredHead | None = None  # int8-rescore: the head's engine, size and precision
    calibration: Calibration | None = None  # the model's score maps (`finalise`)
    min_score: float | None = None  # documents whose final score is below it are dropped (`finalise`)

    @property
    def rescoring(self) -> RescoredHead | None:
        """The rescored head this request runs: none when it fuses scores (fusion keeps int8 only,
        pipeline/rescore.py)."""
        return self.rescored_head if self.fusion == "none" else None

    @property
    def prefiltered(self) -> bool:
        """Whether a pre-filter may cut the documents (so the model scores at most K of them)."""
        return self.strategy in ("hybrid", "bi-encoder") or (self.strategy == "auto" and self.budget_ms is not None)

    @property
    def most_scored(self) -> int | None:
        """The most documents the model may score, before planning: K when pre-filtered, else all (None)."""
        return self.candidates or self.default_candidates if self.prefiltered else None


@dataclass(frozen=True)
class Outcome:
    order: np.ndarray  # every document index, best first
    scores: np.ndarray  # per document, what the order follows (fused, or the model's)
    model_scores: np.ndarray  # per document, the model's own score; NaN where the pre-filter cut it
    first_stage: np.ndarray | None  # per document, when fusion used one
    tokens: int
    plan: Plan
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Scored:
    raw: np.ndarray  # per candidate: logits (what fusion uses)
    final: np.ndarray  # per candidate: the scores the request reports (sigmoid unless raw_scores)
    tokens: int
    meta: dict[str, Any]

    @staticmethod
    def concat(parts: list[_Scored]) -> _Scored:
        meta = dict(parts[-1].meta)
        if "chunking" in meta:  # counts add up over the slices
            counts = ("chunks", "split_documents", "capped_documents")
            meta["chunking"] = {
                **meta["chunking"],
                **{key: sum(part.meta["chunking"][key] for part in parts) for key in counts},
            }
        return _Scored(
            np.concatenate([part.raw for part in parts]),
            np.concatenate([part.final for part in parts]),
            sum(part.tokens for part in parts),
            meta,
        )


@dataclass(frozen=True)
class _ScoringJob:
    """What scoring a request's candidates needs, whichever slice of them is scored."""

    engine: Engine
    query: Tokens
    documents: Sequence[str]
    rule: chunking.ChunkRule | None
    options: Options


class _FirstStage:
    """A request's first-stage scores: the client's, else a served first-stage model's (a cascade), else BM25 over
    its documents; computed at most once."""

    def __init__(self, reranker: Reranker, model: str, query: str, documents: Sequence[str], options: Options) -> None:
        self._reranker, self._model, self._query, self._documents = reranker, model, query, documents
        self.statistics: dict[str, Any] | None = None  # which BM25 statistics scored, once BM25 ran
        self._scores = options.first_stage_scores
        self.model = None if self._scores is not None else options.first_stage_model
        self._done = options.first_stage_done
        self._query_tokens: Tokens | None = None
        if self._scores is not None:
            self.source = "first_stage_scores"
        else:
            self.source = f"model:{self.model.spec.name}" if self.model else "bm25"

    @property
    def known(self) -> bool:
        return self._scores is not None

    async def query_tokens(self, model: Engine) -> Tokens:
        """The query in the first model's own tokens (its vocabulary and template differ from the main model's)."""
        if self._query_tokens is None:
            self._query_tokens = await asyncio.to_thread(model.query_tokens, self._query)
        return self._query_tokens

    async def scores(self) -> np.ndarray:
        if self._scores is None and self.model is not None:
            model = self.model
            query = await self.query_tokens(model)
            self._scores = (await model.score(await model.prepare(query, self._documents), raw=True)).astype(float)
            if self._done is not None:
                self._done()
        elif self._scores is None:
            self._scores, self.statistics = await self._reranker.bm25(self._model, self._query, self._documents)
        return self._scores


class Reranker:
    """Runs requests' stages on engines. Holds what it learns about costs; the embedding pre-filter is lent."""

    def __init__(
        self,
        embedding_prefilter: Callable[[], Awaitable[EmbeddingPrefilter]],
        *,
        bm25_max_chars: int = 20_000,
        statistics: Bm25Statistics | None = None,
    ) -> None:
        self._embedding_prefilter = embedding_prefilter
        self._bm25_max_chars = bm25_max_chars
        self.statistics = statistics or Bm25Statistics()  # default: each request's own documents
        self.costs = CostModel()

    async def run(
        self, engine: Engine, query: str, query_tokens: Tokens, documents: Sequence[str], options: Options
    ) -> Outcome:
        """Rank `documents` for `query`, whose tokens the caller has (it bounds them)."""
        started = time.perf_counter()
        if self.statistics.learn_bytes:  # every request's documents teach its model's BM25 statistics
            await asyncio.to_thread(self.statistics.observe, engine.spec.name, self._bm25_texts(documents))
        first = _FirstStage(self, engine.spec.name, query, documents, options)
        rule = self._chunk_rule(engine, query_tokens, options)
        fusing = options.fusion != "none"
        head = options.rescoring
        costs, wait_ms = self.costs.costs(
            engine,
            len(query_tokens),
            documents,
            chunks=rule,
            bm25=fusing and not first.known and not first.model,
            head=head,
        )
        if first.model is not None:  # the cascade's first model scores every document before the main one
            first_query = await first.query_tokens(first.model)
            first_costs, _ = self.costs.costs(first.model, len(first_query), documents, chunks=None, bm25=False)
            prefilter_ms = first_costs.fixed_ms + first_costs.model_ms(len(documents))
            costs = dataclasses.replace(costs, prefilter_ms=prefilter_ms)
        chosen = self._plan(options, len(documents), costs, options.strategy)
        meta: dict[str, Any] = {}
        if chosen.prefiltered:
            prefilter_scores, meta["prefilter"] = await self._prefilter(chosen.strategy, query, documents, first)
            spent_ms = 1000 * (time.perf_counter() - started)  # measured, so K shrinks if the pre-filter was slow
            chosen = self._plan(options, len(documents), costs, chosen.strategy, spent_ms)
            candidates, rest = select(prefilter_scores, chosen.candidates)
        else:
            candidates, rest = np.arange(len(documents)), np.arange(0)

        deadline = None
        if chosen.prefiltered and options.budget_ms is not None:
            deadline = started + DEADLINE_SHARE * options.budget_ms / 1000
        # int8-rescore with no more candidates than its head: the head engine alone, no int8 pass to score again.
        scorer = head.engine if head is not None and len(candidates) <= head.size else engine
        alone = scorer is not engine
        model_started = time.perf_counter()
        job = _ScoringJob(scorer, query_tokens, documents, rule, options)
        scored = await self._score_until(job, candidates, deadline)
        if wait_ms == 0:  # with a queue ahead, the time says more about the queue than about the estimate
            estimate = costs if alone else dataclasses.replace(costs, rescored_head=0)  # the pass that ran, no head
            self.costs.learn_model(
                scorer, estimate.model_ms(len(scored.raw)), 1000 * (time.perf_counter() - model_started)
            )
        if alone:
            reason = "no more candidates than the head: the head engine alone, no int8 pass"
            meta["rescored"] = {
                "documents": len(scored.raw),
                "precision": head.precision,
                "tokens": scored.tokens,
                "reason": reason,
            }
        if len(scored.raw) < len(candidates):  # the deadline came first: the unscored join the cut ones
            candidates, rest = candidates[: len(scored.raw)], np.concatenate([candidates[len(scored.raw) :], rest])
            reason = f"{chosen.reason}; the deadline stopped scoring after {len(candidates)}"
            chosen = dataclasses.replace(chosen, candidates=len(candidates), reason=reason)
        first_scores = await first.scores() if fusing else None
        if fusing:
            meta["fusion"] = {
                "method": options.fusion,
                "weight": options.fusion_weight,
                "fused": ["model", first.source],
                **({"rrf_k": options.rrf_k} if options.fusion == "rrf" else {}),
            }
        if first.statistics is not None:
            meta["bm25_statistics"] = first.statistics
        order, scores = rank_candidates(
            candidates,
            rest,
            scored.raw if fusing else scored.final,
            first_scores,
            fusion=options.fusion,
            weight=options.fusion_weight,
            rrf_k=options.rrf_k,
        )
        model_scores = np.full(len(documents), np.nan)
        model_scores[candidates] = scored.final
        return Outcome(order, scores, model_scores, first_scores, scored.tokens, chosen, {**meta, **scored.meta})

    def admission_stages(self, engine: Engine, query: str, documents: Sequence[str], options: Options) -> list[Stage]:
        """The request's model work per queue, estimated before any tokenizing: a cascade's first model over every
        document (when it will run), then `engine` over at most K of them."""
        scored = min(options.most_scored or len(documents), len(documents))
        rule = _rough_rule(engine, options)
        head = options.rescoring  # int8-rescore's head: more work
        own = Stage(
            engine.spec.name,
            self.costs.work_seconds(engine, query, documents, chunks=rule, scored=scored, head=head),
        )
        first = options.first_stage_model if options.first_stage_scores is None else None
        cuts = options.strategy in ("hybrid", "auto") and scored < len(documents)  # else the plan runs direct
        if first is None or not (cuts or options.fusion != "none"):
            return [own]
        work = self.costs.work_seconds(first, query, documents, chunks=None, scored=len(documents))
        return [Stage(first.spec.name, work, "first_stage_model"), own]

    def _bm25_texts(self, documents: Sequence[str]) -> list[str]:
        # BM25 indexes about 1 MB of text a second here: a document's first bm25_max_chars decide its score.
        return [document[: self._bm25_max_chars] for document in documents]

    async def bm25(self, model: str, query: str, documents: Sequence[str]) -> tuple[np.ndarray, dict[str, Any]]:
        """BM25 over `documents` with the statistics `model` has (a file, learned, else the documents' own), and
        which those were."""
        started = time.perf_counter()
        statistics, source = self.statistics.choose(model)
        scores = await asyncio.to_thread(bm25_scores, query, self._bm25_texts(documents), statistics)
        self.costs.learn_bm25(len(documents), time.perf_counter() - started)
        return scores, {"source": source, "documents": len(documents) if statistics is None else statistics.documents}

    @staticmethod
    def _plan(options: Options, documents: int, costs: Costs, strategy: Strategy, spent_ms: float = 0.0) -> Plan:
        return plan(
            strategy,
            documents,
            costs,
            budget_ms=options.budget_ms,
            candidates=options.candidates,
            default_candidates=options.default_candidates,
            spent_ms=spent_ms,
        )

    async def _prefilter(
        self, strategy: Strategy, query: str, documents: Sequence[str], first: _FirstStage
    ) -> tuple[np.ndarray, str]:
        """The pre-filter's score per document, and its name."""
        if strategy == "hybrid":
            return await first.scores(), first.source
        embeddings = await self._embedding_prefilter()
        return await embeddings.scores(query, documents), f"embeddings:{embeddings.engine.spec.name}"

    @staticmethod
    def _chunk_rule(engine: Engine, query: Tokens, options: Options) -> chunking.ChunkRule | None:
        if options.chunks is None:
            return None
        pair_query = query if engine.spec.pairs else None
        return chunking.rule_for(
            engine.tokenizer,
            pair_query,
            size=options.chunks.tokens,
            overlap=options.chunks.overlap,
            max_chunks=options.chunks.max_chunks,
        )

    async def _score_until(self, job: _ScoringJob, candidates: np.ndarray, deadline: float | None) -> _Scored:
        """Score candidates best-first in slices, starting no slice that would end past `deadline`: the machine's
        speed swings, and what is left unscored is the least promising (pre-filter order). No deadline: one go."""
        if deadline is None:
            return await self._score(job, candidates)
        parts: list[_Scored] = []
        done, seconds_per_document = 0, 0.0
        while done < len(candidates):
            size = min(DEADLINE_SLICE, len(candidates) - done)
            if parts and time.perf_counter() + seconds_per_document * size > deadline:
                break
            started = time.perf_counter()
            parts.append(await self._score(job, candidates[done : done + size]))
            seconds_per_document = (time.perf_counter() - started) / size
            done += size
        return _Scored.concat(parts)

    async def _score(self, job: _ScoringJob, candidates: np.ndarray) -> _Scored:
        """The model's score of each candidate (the best chunk's, when chunking)."""
        engine, query, documents, rule, options = job.engine, job.query, job.documents, job.rule, job.options
        texts = [documents[i] for i in candidates]
        chunks = None if rule is None else await asyncio.to_thread(chunking.chunk, engine.tokenizer, texts, rule)
        if chunks is not None and chunks.capped and not options.truncate:
            first = int(candidates[chunks.capped[0]])
            raise PayloadTooLarge(
                f"{options.documents_field}[{first}]: needs more than max_chunks_per_doc={chunks.rule.max_chunks} "
                f"chunks of {chunks.rule.size} tokens and truncation is off; raise max_chunks_per_doc or set "
                "truncate to true"
            )
        inputs = texts if chunks is None else chunks.texts
        prepared = await engine.prepare(query, inputs, instruction=options.instruction)
        if not options.truncate and any(prepared.truncated):
            position = prepared.truncated.index(True)
            first = int(candidates[position if chunks is None else chunks.owners[position]])
            raise PayloadTooLarge(
                f"{options.documents_field}[{first}]: longer than the model's limit of {engine.spec.max_length} "
                "tokens (with the query) and truncation is off; set truncate to true to cut it"
            )
        self._learn_lengths(engine, query, inputs, prepared)
        raw, final = await engine.score_raw_and_final(prepared)
        if options.raw_scores:
            final = raw
        meta: dict[str, Any] = {}
        if chunks is not None:
            raw, final = chunks.best(raw, len(texts)), chunks.best(final, len(texts))
            meta["chunking"] = {
                "chunk_tokens": chunks.rule.size,
                "overlap_tokens": chunks.rule.size - chunks.rule.stride,
                "max_chunks_per_doc": chunks.rule.max_chunks,
                "chunks": len(chunks.texts),
                "split_documents": chunks.split_documents,
                "capped_documents": len(chunks.capped),
            }
        return _Scored(raw, final, prepared.tokens, meta)

    def _learn_lengths(self, engine: Engine, query: Tokens, texts: Sequence[str], prepared: Prepared) -> None:
        """Characters per token, from the documents the tokenizer did not cut."""
        pair = engine.spec.pairs
        items = prepared.inputs if pair else prepared.inputs[1:]
        overhead = engine.tokenizer.special_tokens(pair=pair) + (len(query) if pair else 0)
        kept = [i for i, cut in enumerate(prepared.truncated) if not cut]
        self.costs.learn_tokens(engine, [texts[i] for i in kept], [len(items[i]) - overhead for i in kept])


def _rough_rule(engine: Engine, options: Options) -> chunking.ChunkRule | None:
    """The chunk rule before the query is tokenized: chunks of the requested size, else half the window."""
    if options.chunks is None:
        return None
    size = options.chunks.tokens or engine.spec.max_length // 2
    return chunking.ChunkRule(size, options.chunks.overlap, options.chunks.max_chunks)


def finalise(outcome: Outcome, options: Options) -> Outcome:
    """The answer's scores, after any fp32 re-scoring: probabilities where the model's calibration has a map for
    what ran (unless the client asked for raw scores), then the `min_score` cut."""
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
