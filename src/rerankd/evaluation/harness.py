"""The evaluation run: BM25 over the corpus, one scoring pass through the service, every strategy replayed on
those scores and measured with `ranx`, a sample timed through the service; docs/strategies.md (Measuring).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ranx import Qrels, Run, evaluate

from rerankd.datasets import BeirDataset
from rerankd.evaluation.variants import QueryScores, Variant, standard_variants
from rerankd.pipeline.fusion import FusionMethod
from rerankd.pipeline.service import LocalService
from rerankd.pipeline.types import RerankRequest
from rerankd.prefilter import Bm25, bm25_scores
from rerankd.reporting import percentile

METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@30", "recall@100")
FIT_GRID = tuple(round(w, 2) for w in np.arange(0.0, 1.0001, 0.05))


@dataclass(frozen=True)
class EvalConfig:
    model: str  # the served name of the final scorer
    bi_model: str  # the served name of the bi-encoder
    depths: Sequence[int] = (100, 1000)
    queries: int | None = None  # evaluate at most this many queries (a seeded sample)
    max_pairs: int = 100_000  # per depth: queries x depth model pairs at most
    timed_queries: int = 10
    hybrid_ks: Sequence[int] = (10, 20, 30, 50, 100)
    fusion_weights: Sequence[float] = (0.3, 0.5, 0.7)
    fit_fraction: float = 0.5  # share of queries that fit the fusion weight; 0 = no fitting, report on all
    rrf_k: int = 60
    seed: int = 0
    progress: bool = True


def sample_queries(dataset: BeirDataset, limit: int | None, seed: int) -> list[str]:
    ids = sorted(dataset.queries)
    random.Random(seed).shuffle(ids)
    return ids[:limit] if limit else ids


def split_queries(ids: Sequence[str], fit_fraction: float) -> tuple[list[str], list[str]]:
    """(fit, test); without fitting every query is a test query."""
    cut = int(len(ids) * fit_fraction)
    if fit_fraction <= 0 or cut == 0 or cut == len(ids):
        return [], list(ids)
    return list(ids[:cut]), list(ids[cut:])


def measure(qrels: dict[str, dict[str, int]], rankings: dict[str, list[str]]) -> dict[str, float]:
    """ranx metrics of rankings (doc ids best first); scores are rank-based so ranx keeps our order exactly."""
    run = {qid: {doc: float(len(docs) - i) for i, doc in enumerate(docs)} for qid, docs in rankings.items()}
    values = evaluate(Qrels({qid: qrels[qid] for qid in rankings}), Run(run), list(METRICS), make_comparable=True)
    return {name: float(values[name]) for name in METRICS}


class Evaluation:
    """One evaluation of a data set through a loaded `LocalService`."""

    def __init__(self, dataset: BeirDataset, service: LocalService, config: EvalConfig) -> None:
        self.dataset = dataset
        self.service = service
        self.config = config
        self.doc_ids = list(dataset.corpus)
        self.texts = [dataset.corpus[i] for i in self.doc_ids]

    def _progress(self, items: Sequence, label: str) -> Any:
        if not self.config.progress:
            return items
        from tqdm import tqdm

        return tqdm(items, desc=label, unit="query", leave=False)

    def run(self) -> dict[str, Any]:
        config = self.config
        queries = sample_queries(self.dataset, config.queries, config.seed)
        started = time.perf_counter()
        index = Bm25(self.texts)
        index_seconds = time.perf_counter() - started
        reports = []
        for depth in config.depths:
            depth = min(depth, len(self.texts))
            count = max(1, min(len(queries), config.max_pairs // depth))
            reports.append(self._depth(index, queries[:count], depth))
        return {
            "dataset_documents": len(self.texts),
            "first_stage_index_seconds": round(index_seconds, 2),
            "config": {key: value for key, value in config.__dict__.items() if key != "progress"},
            "depths": reports,
        }

    def _depth(self, index: Bm25, queries: list[str], depth: int) -> dict[str, Any]:
        """One depth's record: its query split, the fitted fusion weights and a row per strategy."""
        started = time.perf_counter()
        positions, first = index.top([self.dataset.queries[q] for q in queries], depth)
        first_ms = 1000 * (time.perf_counter() - started) / len(queries)
        scores = asyncio.run(self._score_all(queries, positions, first, depth))
        fit, test = split_queries(queries, self.config.fit_fraction)
        fitted = {method: self._fit(method, scores, fit) for method in ("zscore", "rrf")} if fit else {}
        report = {"depth": depth, "fit_queries": fit, "test_queries": test, "fitted": fitted, "rows": []}
        variants = standard_variants(depth, self.config.hybrid_ks, self.config.fusion_weights, fitted)  # type: ignore[arg-type]
        timings = asyncio.run(self._time(variants, scores, test, depth))
        for variant in variants:
            metrics = measure(self.dataset.qrels, self._rankings(variant, scores, test))
            latencies = [first_ms] if variant.kind == "first-stage" else timings.get(variant.timing_key, [])
            p50 = percentile(latencies, 50)
            report["rows"].append(
                {
                    "strategy": variant.name,
                    **metrics,
                    "p50_ms": round(p50, 1),
                    "docs_per_s": round(1000 * depth / p50, 1) if p50 > 0 else None,
                    "timed_queries": len(latencies),
                    "variant": variant.__dict__,
                }
            )
        return report

    async def _score_all(
        self, queries: list[str], positions: np.ndarray, first: np.ndarray, depth: int
    ) -> dict[str, QueryScores]:
        """The model's raw score and the bi-encoder's similarity of every candidate, through the service."""
        scores = {}
        for row, qid in enumerate(self._progress(queries, f"scoring top {depth}")):
            texts = [self.texts[p] for p in positions[row]]
            query = self.dataset.queries[qid]
            model = await self._scores(
                RerankRequest(query, texts, self.config.model, raw_scores=True, strategy="direct")
            )
            bi = await self._scores(RerankRequest(query, texts, self.config.bi_model, strategy="direct"))
            scores[qid] = QueryScores(
                query,
                [self.doc_ids[p] for p in positions[row]],
                texts,
                first[row].astype(np.float64),
                bm25_scores(query, texts).astype(np.float64),
                model,
                bi,
            )
        return scores

    async def _scores(self, request: RerankRequest) -> np.ndarray:
        result = await self.service.rerank(request)
        scores = np.empty(len(request.documents), dtype=np.float64)
        for ranked in result.results:
            scores[ranked.index] = ranked.score
        return scores

    def _rankings(self, variant: Variant, scores: dict[str, QueryScores], queries: list[str]) -> dict[str, list[str]]:
        rrf_k = self.config.rrf_k
        return {qid: [scores[qid].doc_ids[i] for i in variant.rank(scores[qid], rrf_k)] for qid in queries}

    def _fit(self, method: FusionMethod, scores: dict[str, QueryScores], queries: list[str]) -> float:
        """The fusion weight with the best NDCG@10 on `queries` (ties: the smaller weight)."""

        def ndcg(weight: float) -> float:
            variant = Variant("fit", "direct", fusion=method, weight=weight)
            return measure(self.dataset.qrels, self._rankings(variant, scores, queries))["ndcg@10"]

        return max(FIT_GRID, key=lambda w: (round(ndcg(w), 6), -w))

    async def _time(
        self, variants: list[Variant], scores: dict[str, QueryScores], queries: list[str], depth: int
    ) -> dict[tuple, list[float]]:
        """Wall time of each strategy's service request on a sample of queries, strategies interleaved."""
        timed: dict[tuple, Variant] = {}
        for variant in variants:
            if variant.kind != "first-stage":
                timed.setdefault(variant.timing_key, variant)
        times: dict[tuple, list[float]] = {key: [] for key in timed}
        sample = queries[: self.config.timed_queries]
        for qid in self._progress(sample, f"timing top {depth}"):
            for key, variant in timed.items():
                request = variant.request(scores[qid], model=self.config.model, bi_model=self.config.bi_model)
                if variant.kind == "bi-encoder":
                    await self.service.rerank(request)  # the cache is warm in the RAG setting this row models
                started = time.perf_counter()
                await self.service.rerank(request)
                times[key].append(1000 * (time.perf_counter() - started))
        return times
