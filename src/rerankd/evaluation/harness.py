"""The evaluation run: BM25 over the corpus, one scoring pass through the service, every strategy replayed on
those scores and measured with `ranx`, a sample timed through the service; docs/strategies.md (Measuring).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from ranx import Qrels, Run, evaluate

from rerankd.datasets import BeirDataset
from rerankd.evaluation.calibrate import expected_calibration_error, precision_at, reliability
from rerankd.evaluation.score_store import ScoreStore
from rerankd.evaluation.variants import QueryScores, Variant, standard_variants
from rerankd.first_stage import Bm25, bm25_scores
from rerankd.pipeline.calibration import Calibration
from rerankd.pipeline.fusion import FusionMethod
from rerankd.pipeline.service import LocalService
from rerankd.pipeline.types import RerankRequest
from rerankd.reporting import percentile

METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@30", "recall@100")
FIT_GRID = tuple(round(w, 2) for w in np.arange(0.0, 1.0001, 0.05))


@dataclass(frozen=True)
class EvalConfig:
    model: str  # the served name of the final scorer
    bi_model: str | None  # the served name of the bi-encoder; None: no bi-encoder rows (calibrate)
    first_model: str | None = None  # a served model evaluated alone and as a cascade's first stage
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
    learn_queries: Sequence[str] = ()  # other queries whose candidates the service is sent first (learned BM25)
    calibration: Calibration | None = None  # the model's maps: a calibrated row each
    score_store: ScoreStore | None = None  # model scores kept between runs


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
        self.store = config.score_store or ScoreStore(None)
        self.learned: dict[str, Any] = {}

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
        if config.learn_queries:
            self.learned = asyncio.run(self._learn(index, list(config.learn_queries), max(config.depths)))
        reports = []
        for depth in config.depths:
            depth = min(depth, len(self.texts))
            count = max(1, min(len(queries), config.max_pairs // depth))
            reports.append(self._depth(index, queries[:count], depth))
        return {
            "dataset_documents": len(self.texts),
            "first_stage_index_seconds": round(index_seconds, 2),
            "config": {
                key: len(value) if key == "learn_queries" else _plain(value)
                for key, value in config.__dict__.items()
                if key != "progress"
            },
            "learned_from": self.learned or None,
            "depths": reports,
        }

    def candidate_scores(self) -> tuple[dict[str, QueryScores], dict[str, int]]:
        """Every sampled query's BM25 top `depths[0]` and their scores, and how often each BM25 statistics source
        scored them (what `calibrate` fits on)."""
        queries = sample_queries(self.dataset, self.config.queries, self.config.seed)
        depth = min(self.config.depths[0], len(self.texts))
        positions, first = Bm25(self.texts).top([self.dataset.queries[q] for q in queries], depth)
        scores = asyncio.run(self._score_all(queries, positions, first, depth))
        return scores, dict(Counter(query.statistics for query in scores.values()))

    def _depth(self, index: Bm25, queries: list[str], depth: int) -> dict[str, Any]:
        """One depth's record: its query split, the fitted fusion weights and a row per strategy."""
        started = time.perf_counter()
        positions, first = index.top([self.dataset.queries[q] for q in queries], depth)
        first_ms = 1000 * (time.perf_counter() - started) / len(queries)
        scores = asyncio.run(self._score_all(queries, positions, first, depth))
        fit, test = split_queries(queries, self.config.fit_fraction)
        fitted = {method: self._fit(method, scores, fit) for method in ("zscore", "rrf")} if fit else {}
        sources = Counter(scores[q].statistics for q in test)
        server = max(sources, key=sources.__getitem__) if set(sources) != {"request"} else None
        report = {
            "depth": depth,
            "fit_queries": fit,
            "test_queries": test,
            "fitted": fitted,
            "server_bm25_statistics": dict(sources),
            "rows": [],
        }
        calibration = self.config.calibration
        variants = standard_variants(
            depth,
            self.config.hybrid_ks,
            self.config.fusion_weights,
            fitted,  # type: ignore[arg-type]
            server=server,
            maps=calibration.maps if calibration else None,
            first_model=self.config.first_model,
        )
        if self.config.bi_model is None:
            variants = [variant for variant in variants if "bi-encoder" not in variant.kind]
        timings = asyncio.run(self._time(variants, scores, test, depth))
        for variant in variants:
            metrics = measure(self.dataset.qrels, self._rankings(variant, scores, test))
            metrics.update(self._calibration_metrics(variant, scores, test))
            latencies = [first_ms] if variant.kind == "first-stage" else timings.get(variant.timing_key, [])
            p50 = percentile(latencies, 50)
            report["rows"].append(
                {
                    "strategy": variant.name,
                    **metrics,
                    "p50_ms": round(p50, 1),
                    "docs_per_s": round(1000 * depth / p50, 1) if p50 > 0 else None,
                    "timed_queries": len(latencies),
                    "variant": {key: _plain(value) for key, value in variant.__dict__.items()},
                }
            )
        return report

    async def _learn(self, index: Bm25, queries: list[str], depth: int) -> dict[str, Any]:
        """Send the service each of `queries`' BM25 top `depth` (as traffic would), so it learns BM25 statistics;
        its model scores one candidate each."""
        positions, _ = index.top(queries, depth)
        meta: dict[str, Any] = {}
        for row, query in enumerate(self._progress(queries, "learning")):
            texts = [self.texts[p] for p in positions[row]]
            request = RerankRequest(query, texts, self.config.model, strategy="hybrid", candidates=1)
            meta = (await self.service.rerank(request)).meta["rerankd"]
        return {"queries": len(queries), "depth": depth, "bm25_statistics_after": meta.get("bm25_statistics")}

    async def _score_all(
        self, queries: list[str], positions: np.ndarray, first: np.ndarray, depth: int
    ) -> dict[str, QueryScores]:
        """Every candidate's model logit and bi-encoder similarity (through the service, or the score store), and
        the service's own BM25 of them."""
        scores = {}
        for row, qid in enumerate(self._progress(queries, f"scoring top {depth}")):
            texts = [self.texts[p] for p in positions[row]]
            doc_ids = [self.doc_ids[p] for p in positions[row]]
            query = self.dataset.queries[qid]
            model, server, statistics = await self._model_and_server_bm25(query, texts, doc_ids)
            bi, first_model = np.zeros(len(texts)), None
            if self.config.bi_model is not None:
                request = RerankRequest(query, texts, self.config.bi_model, strategy="direct")
                bi = await self._stored(request, doc_ids, lambda result: [r.score for r in result.results])
            if self.config.first_model is not None:  # the score a cascade selects by: as the service reports it
                request = RerankRequest(query, texts, self.config.first_model, strategy="direct")
                first_model = await self._stored(request, doc_ids, lambda result: [r.score for r in result.results])
            scores[qid] = QueryScores(
                query,
                doc_ids,
                texts,
                first[row].astype(np.float64),
                bm25_scores(query, texts).astype(np.float64),
                model,
                bi,
                self._reported(model),
                server,
                statistics,
                first_model,
            )
            if row % 25 == 24:  # a long run cut short keeps most of its scores
                self.store.save()
        self.store.save()
        return scores

    async def _model_and_server_bm25(
        self, query: str, texts: list[str], doc_ids: list[str]
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """The model's logits and the service's BM25 (and its statistics' source): one fused request gives both
        (`model_score`, `first_stage_score`); with the logits stored, a hybrid request that scores one candidate."""
        fused = RerankRequest(query, texts, self.config.model, raw_scores=True, strategy="direct", fusion="zscore")
        answers: list = []

        def model_scores(result: Any) -> list[float]:
            answers.append(result)
            return [r.model_score for r in result.results]

        model = await self._stored(fused, doc_ids, model_scores)
        if not answers:
            cheap = RerankRequest(query, texts, self.config.model, strategy="hybrid", candidates=1, fusion="zscore")
            answers.append(await self.service.rerank(cheap))
        server = _by_index(answers[0].results, [r.first_stage_score for r in answers[0].results])
        return model, server, answers[0].meta["rerankd"]["bm25_statistics"]["source"]

    async def _stored(self, request: RerankRequest, doc_ids: list[str], read: Any) -> np.ndarray:
        """The request's per-document scores (`read` picks them from the answer), from the store when it has them."""
        key = self.service.registry.get(request.model).spec.revision  # the content's, whatever name serves it
        stored = self.store.get(key, request.query, doc_ids)
        if stored is not None:
            return stored
        result = await self.service.rerank(request)
        scores = _by_index(result.results, read(result))
        self.store.put(key, request.query, doc_ids, scores)
        return scores

    def _reported(self, logits: np.ndarray) -> np.ndarray:
        """The model's score as the service reports it, from its logit (the engine's own conversion)."""
        engine = self.service.registry.get(self.config.model)
        if engine.spec.kind == "bi-encoder" or engine.spec.activation == "identity":
            return logits
        if engine.spec.activation == "softmax":  # the positive label's logit alone does not give the softmax
            return np.full(len(logits), np.nan)
        return engine.to_scores(logits[:, None].astype(np.float32), raw=False).astype(np.float64)

    def _calibration_metrics(
        self, variant: Variant, scores: dict[str, QueryScores], queries: list[str]
    ) -> dict[str, Any]:
        """ECE (10 bins) over every candidate of `queries` where the variant's scores are probabilities, its
        reliability bins, and for a calibrated variant the precision at the thresholds its map was fitted with."""
        if not variant.probabilities:
            return {"ece": None}
        values, relevant = [], []
        for qid in queries:
            values.append(variant.returned(scores[qid], self.config.rrf_k)[1])
            relevant.append([self.dataset.qrels[qid].get(doc, 0) > 0 for doc in scores[qid].doc_ids])
        probabilities, labels = np.concatenate(values), np.concatenate(relevant).astype(np.float64)
        if np.isnan(probabilities).any():
            return {"ece": None}
        out: dict[str, Any] = {
            "ece": expected_calibration_error(probabilities, labels),
            "reliability": reliability(probabilities, labels),
        }
        if variant.score_map is not None:
            out["threshold_precision"] = {}
            for target, threshold in variant.score_map.report.get("thresholds_for_precision", {}).items():
                if threshold is not None:
                    precision, kept = precision_at(probabilities, labels, threshold)
                    out["threshold_precision"][target] = {"threshold": threshold, "precision": precision, "kept": kept}
        return out

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
                config = self.config
                request = variant.request(
                    scores[qid], model=config.model, bi_model=config.bi_model, first_model=config.first_model
                )
                if variant.kind in ("bi-encoder", "cascade", "first-model-only"):
                    # The embedding (or ColBERT vector) cache is warm in the RAG setting these rows model.
                    await self.service.rerank(request)
                started = time.perf_counter()
                await self.service.rerank(request)
                times[key].append(1000 * (time.perf_counter() - started))
        return times


def _by_index(results: Sequence[Any], values: Sequence[float | None]) -> np.ndarray:
    """Per-document values of an answer's results (which come best first)."""
    scores = np.full(len(results), np.nan)
    for ranked, value in zip(results, values, strict=True):
        scores[ranked.index] = np.nan if value is None else value
    return scores


def _plain(value: Any) -> Any:
    """A config or variant field as JSON holds it (calibration maps and stores by what they are)."""
    if isinstance(value, Calibration):
        return {"model": value.model, "maps": list(value.maps)}
    if isinstance(value, ScoreStore):
        return str(value.path)
    if hasattr(value, "to_json"):
        return value.method
    return value
