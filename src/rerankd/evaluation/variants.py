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

from rerankd.pipeline.calibration import ScoreMap, parse_key
from rerankd.pipeline.fusion import FusionMethod, best_first
from rerankd.pipeline.ranking import rank_candidates, select
from rerankd.pipeline.types import RerankRequest

VariantKind = Literal["first-stage", "bi-encoder-only", "first-model-only", "direct", "hybrid", "bi-encoder", "cascade"]
# Which first stage hybrid and fusion use: the client's (corpus BM25 sent as `first_stage_scores`), BM25 over the
# request's documents alone, or the server's BM25 with whatever statistics it has (a file, or learned).
FirstStage = Literal["client", "request", "server"]


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
    reported: np.ndarray  # the model's score as the service reports it (the sigmoid of the logit)
    server_bm25: np.ndarray  # the service's own BM25 of every candidate, with its statistics
    statistics: str = "request"  # which statistics the service's BM25 used (request, learned, file)
    first_model: np.ndarray | None = None  # the cascade's first-stage model's score of every candidate


@dataclass(frozen=True)
class Variant:
    name: str
    kind: VariantKind
    candidates: int | None = None
    fusion: FusionMethod = "none"
    weight: float = 0.0
    first_stage: FirstStage = "client"  # which first stage hybrid and fusion use

    score_map: ScoreMap | None = None  # calibrated: the service maps its returned scores through this

    @classmethod
    def from_key(cls, key: str, score_map: ScoreMap | None = None) -> Variant:
        """The variant a calibration key names, with the server's BM25 as its first stage."""
        strategy, candidates, fusion, weight = parse_key(key)
        name = f"{key} calibrated" if score_map is not None else key
        return cls(name, strategy, candidates, fusion, weight, "server", score_map)  # type: ignore[arg-type]

    @property
    def timing_key(self) -> tuple:
        """Variants that differ only in fusion weight, rule or calibration cost the same; they share one timing.
        Without client scores the service runs its own BM25, whatever the replay compares it with."""
        return self.kind, self.candidates, self.fusion != "none", self.first_stage == "client"

    def request(
        self, scores: QueryScores, *, model: str, bi_model: str | None, first_model: str | None = None
    ) -> RerankRequest:
        """The service request that runs this strategy on the query's candidates."""
        if self.kind in ("bi-encoder-only", "first-model-only"):
            alone = bi_model if self.kind == "bi-encoder-only" else first_model
            assert alone is not None, f"{self.name} needs its model"
            return RerankRequest(scores.query, scores.texts, alone, strategy="direct")
        if self.kind == "cascade":
            return RerankRequest(
                scores.query, scores.texts, model, strategy="hybrid", candidates=self.candidates,
                first_stage_model=first_model,
            )  # fmt: skip
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
        return self.returned(scores, rrf_k)[0]

    def returned(self, scores: QueryScores, rrf_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidate positions, best first, and each candidate's score as the service returns it (the reported
        model score, or the fused value of the logits; mapped to a probability when calibrated)."""
        first = {"client": scores.first, "request": scores.request_bm25, "server": scores.server_bm25}[self.first_stage]
        everything = np.arange(len(scores.doc_ids))
        if self.kind == "cascade":  # the first-stage model's scores pick the candidates and order the rest
            assert scores.first_model is not None, "a cascade needs its first-stage model's scores"
            first = scores.first_model
        alone = {"first-stage": scores.first, "bi-encoder-only": scores.bi, "first-model-only": scores.first_model}
        if self.kind in alone:  # one stage's own order
            values = alone[self.kind]
            assert values is not None, f"{self.name} needs its model's scores"
            return best_first(values), values
        if self.kind == "direct":
            candidates, rest = everything, everything[:0]
        else:
            candidates, rest = select(scores.bi if self.kind == "bi-encoder" else first, self.candidates or 0)
        model = scores.model if self.fusion != "none" else scores.reported  # as run/rank.py ranks
        order, values = rank_candidates(
            candidates, rest, model[candidates], first, fusion=self.fusion, weight=self.weight, rrf_k=rrf_k
        )
        return order, values if self.score_map is None else self.score_map(values)

    @property
    def probabilities(self) -> bool:
        """Whether its returned scores are meant as probabilities (so calibration error applies): calibrated, or
        the model's reported score unfused."""
        return self.score_map is not None or (self.fusion == "none" and self.kind in ("direct", "hybrid"))


def standard_variants(
    depth: int,
    hybrid_ks: Sequence[int],
    weights: Sequence[float],
    fitted: dict[FusionMethod, float],
    *,
    server: str | None = None,
    maps: dict[str, ScoreMap] | None = None,
    first_model: str | None = None,
) -> list[Variant]:
    """The table's rows: first stage, bi-encoder, direct, hybrid at several K, fusion at several weights; with
    `server` (the statistics the service's BM25 had, when not only the request's) fusion with that BM25; with
    `first_model` (its name) that model alone and as a cascade's first stage at each K; and a calibrated row per
    map of the model's calibration."""
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
    if server is not None:
        tag = f"server bm25 ({server})"
        rows += [
            Variant(f"fusion zscore w={w:g}, {tag}", "direct", fusion="zscore", weight=w, first_stage="server")
            for w in dict.fromkeys((z, 0.5))
        ]
        if middle is not None:
            rows.append(Variant(f"hybrid K={middle} + zscore w={z:g}, {tag}", "hybrid", middle, "zscore", z, "server"))
    if first_model is not None:
        rows.append(Variant(f"{first_model} only", "first-model-only"))
        rows += [Variant(f"cascade {first_model} K={k}", "cascade", k) for k in ks]
    return rows + [Variant.from_key(key, score_map) for key, score_map in (maps or {}).items()]
