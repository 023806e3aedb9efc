"""The strategies `eval` compares, and how each ranks one query's candidates from cached scores.

Scoring every candidate once per query and replaying each strategy on those scores is what makes a full
evaluation affordable on a CPU. The replay goes through the very functions the service ranks with
(`pipeline.ranking.select` and `rank_candidates`), and `eval` times every strategy through the real service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rerankd.pipeline.fusion import FusionMethod, best_first
from rerankd.pipeline.ranking import rank_candidates, select
from rerankd.pipeline.types import RerankRequest

VariantKind = Literal["first-stage", "bi-encoder-only", "direct", "hybrid", "bi-encoder"]
FirstStage = Literal["client", "request"]


@dataclass(frozen=True)
class QueryScores:
    """One query's candidates (the first stage's top N) and every score a strategy may need."""

    query: str
    doc_ids: list[str]
    texts: list[str]
    first: np.ndarray  # the first stage's score (corpus BM25), what a search client would send
    request_bm25: np.ndarray  # BM25 over the candidates alone, what the service computes without client scores
    model: np.ndarray  # the model's raw score (logit) of every candidate
    bi: np.ndarray  # the bi-encoder's cosine similarity of every candidate


@dataclass(frozen=True)
class Variant:
    name: str
    kind: VariantKind
    candidates: int | None = None
    fusion: FusionMethod = "none"
    weight: float = 0.0
    first_stage: FirstStage = "client"  # which first stage hybrid and fusion use

    @property
    def timing_key(self) -> tuple:
        """Variants that differ only in fusion weight or rule cost the same; they share one timing."""
        return self.kind, self.candidates, self.fusion != "none", self.first_stage

    def request(self, scores: QueryScores, *, model: str, bi_model: str) -> RerankRequest:
        """The service request that runs this strategy on the query's candidates."""
        if self.kind == "bi-encoder-only":
            return RerankRequest(scores.query, scores.texts, bi_model, strategy="direct")
        client = scores.first.tolist() if self.first_stage == "client" else None
        return RerankRequest(
            scores.query,
            scores.texts,
            model,
            strategy=self.kind,  # type: ignore[arg-type]
            candidates=self.candidates,
            fusion=self.fusion,
            fusion_weight=self.weight,
            first_stage_scores=client if (self.fusion != "none" or self.kind == "hybrid") else None,
        )

    def rank(self, scores: QueryScores, rrf_k: int) -> np.ndarray:
        """Candidate positions, best first, as the service would order them."""
        if self.kind == "first-stage":
            return best_first(scores.first)
        if self.kind == "bi-encoder-only":
            return best_first(scores.bi)
        first = scores.first if self.first_stage == "client" else scores.request_bm25
        everything = np.arange(len(scores.doc_ids))
        if self.kind == "direct":
            candidates, rest = everything, everything[:0]
        else:
            candidates, rest = select(first if self.kind == "hybrid" else scores.bi, self.candidates or 0)
        order, _ = rank_candidates(
            candidates, rest, scores.model[candidates], first, fusion=self.fusion, weight=self.weight, rrf_k=rrf_k
        )
        return order


def standard_variants(
    depth: int, hybrid_ks: Sequence[int], weights: Sequence[float], fitted: dict[FusionMethod, float]
) -> list[Variant]:
    """The table's rows: first stage, bi-encoder, direct, hybrid at several K, fusion at several weights."""
    ks = [k for k in hybrid_ks if k < depth]
    middle = 30 if 30 in ks else (ks[len(ks) // 2] if ks else None)
    z, rrf = fitted.get("zscore", 0.5), fitted.get("rrf", 0.5)
    tag = " (fitted)" if fitted else ""
    rows = [
        Variant("bm25 (first stage)", "first-stage"),
        Variant("bi-encoder only", "bi-encoder-only"),
        Variant("direct", "direct"),
        *(Variant(f"hybrid K={k}", "hybrid", k) for k in ks),
        *(Variant(f"fusion zscore w={w:g}", "direct", fusion="zscore", weight=w) for w in weights),
    ]
    if fitted:  # without fitting, w = 0.5 is already a fixed-weight row
        rows.append(Variant(f"fusion zscore w={z:g} (fitted)", "direct", fusion="zscore", weight=z))
    rows += [
        Variant(f"fusion rrf w={rrf:g}{tag}", "direct", fusion="rrf", weight=rrf),
        Variant(f"fusion zscore w={z:g}, request bm25", "direct", fusion="zscore", weight=z, first_stage="request"),
    ]
    if middle is not None:
        rows += [
            Variant(f"bi-encoder K={middle} (warm cache)", "bi-encoder", middle),
            Variant(f"hybrid K={middle}, request bm25", "hybrid", middle, first_stage="request"),
            Variant(f"hybrid K={middle} + zscore w={z:g}", "hybrid", middle, fusion="zscore", weight=z),
        ]
    return rows
