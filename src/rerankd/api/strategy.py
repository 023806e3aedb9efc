"""Request fields and response headers for strategies, fusion and chunking, shared by every dialect.

All fields are optional and default to the server's settings, so clients of the plain Cohere or TEI shape are
unaffected. See docs/strategies.md.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rerankd.pipeline.types import MAX_CHUNKS_PER_DOC, MIN_TIMEOUT_MS, Ranked, RerankResult
from rerankd.vocabulary import FusionMethod, Strategy


class StrategyFields(BaseModel):
    # Strict: a wrong JSON type is a 422, never coerced ("100" is not a number, true is not 1, 2.0 is not an int).
    model_config = ConfigDict(strict=True)

    strategy: Strategy | None = Field(
        default=None,
        description="`direct` scores every document with the model; `hybrid` keeps the best `candidates` by BM25 "
        "over the request's documents (or by `first_stage_scores` when sent) and scores those; `bi-encoder` "
        "pre-filters by embedding similarity (cached per document); `auto` is direct unless "
        "`latency_budget_ms` calls for hybrid with the largest K that fits. Default: the server's `strategy`.",
    )
    latency_budget_ms: float | None = Field(
        default=None,
        description="Latency target in ms (> 0): `auto` and the pre-filters choose how many documents the model "
        "scores from the engine's measured speed. Default: the server's `latency_budget_ms` (0 = none).",
    )
    candidates: int | None = Field(
        default=None,
        description="At most this many documents (>= 1) pass the pre-filter to the model. Documents cut by the "
        "pre-filter still come back after the scored ones, in pre-filter order, marked `cut_by_prefilter`.",
    )
    fusion: FusionMethod | None = Field(
        default=None,
        description="Combine the model's score with a first-stage score (`first_stage_scores`, else BM25 over the "
        "request's documents): `zscore` = (1-w)*z(model) + w*z(first); `rrf` = (1-w)/(k+rank(model)) + "
        "w/(k+rank(first)). Results then carry `model_score` and `first_stage_score`. Default: the server's `fusion`.",
    )
    fusion_weight: float | None = Field(
        default=None, description="w in [0, 1], the first stage's share in fusion. Default: the server's setting."
    )
    first_stage_scores: list[float] | None = Field(
        default=None,
        description="Your retrieval score for each document (same order and length as the documents): used by "
        "`hybrid` as its pre-filter and by `fusion` as the first stage instead of BM25.",
    )
    first_stage_model: str | None = Field(
        default=None,
        description="A model this server serves (id or alias) as `hybrid`'s pre-filter instead of BM25: a "
        "cascade, e.g. a small cross-encoder choosing the `candidates` an LLM reranker scores. Default: the "
        "server's `first_stage_model` (empty = BM25).",
    )
    instruction: str | None = Field(
        default=None,
        description="An LLM reranker's task description (Qwen3-Reranker's `<Instruct>`), placed by the model's "
        "prompt template; at most `max_query_chars` characters. Default: the model's own. Only models whose "
        "template reads one accept it (400 otherwise).",
    )
    chunking: bool | None = Field(
        default=None,
        description="Split documents longer than the model's window into overlapping chunks and score each "
        "document by its best chunk, instead of truncating. Default: the server's `chunking`, or on when "
        "`max_chunks_per_doc` is given.",
    )
    max_chunks_per_doc: int | None = Field(
        default=None,
        description=f"Most chunks per document (1 to {MAX_CHUNKS_PER_DOC}); text past them is dropped (413 with "
        "`truncate: false`). Default: the server's `max_chunks_per_doc`.",
    )

    timeout_ms: float | None = Field(
        default=None,
        description=f"Deadline in ms (at least {MIN_TIMEOUT_MS}): a request not answered by then gets 504 and its "
        "queued work is dropped. Default and upper bound: the server's `request_timeout_seconds`.",
    )
    min_score: float | None = Field(
        default=None,
        description="Leave out documents whose `relevance_score` (as returned: calibrated, fused or raw) is below "
        "this; `top_n` then counts the rest. With a calibration file for the model, scores are probabilities of "
        "relevance, so a threshold means the same across queries. Default: none.",
    )

    def strategy_fields(self) -> dict[str, Any]:
        """The fields as `RerankRequest` keyword arguments."""
        return {name: getattr(self, name) for name in StrategyFields.model_fields}


class ScoreDetails(BaseModel):
    """Per-result fields present only when fusion or a pre-filter shaped the ranking."""

    model_score: float | None = Field(default=None, description="The model's own score, when the ranking is fused.")
    first_stage_score: float | None = Field(default=None, description="The fused first-stage score.")
    cut_by_prefilter: bool | None = Field(
        default=None, description="True when the pre-filter cut the document: the model did not score it."
    )


def score_details(ranked: Ranked) -> dict[str, Any]:
    return {
        "model_score": ranked.model_score,
        "first_stage_score": ranked.first_stage_score,
        "cut_by_prefilter": True if ranked.cut_by_prefilter else None,
    }


def _header(head: str, fields: dict[str, Any]) -> str:
    return "; ".join([head, *(f"{key}={value}" for key, value in fields.items() if value is not None)])


def strategy_headers(result: RerankResult) -> dict[str, str]:
    """`X-Rerankd-Strategy` (and `X-Rerankd-Fusion`, `X-Rerankd-Chunking`): what ran, for every dialect (TEI's
    list answer has no `meta`)."""
    meta = result.meta.get("rerankd")
    if not meta:
        return {}
    keys = ("candidates", "documents", "estimate_ms", "latency_budget_ms", "prefilter")
    headers = {"X-Rerankd-Strategy": _header(meta["strategy"], {key: meta.get(key) for key in keys})}
    if fusion := meta.get("fusion"):
        headers["X-Rerankd-Fusion"] = _header(
            fusion["method"], {"weight": fusion["weight"], "first_stage": fusion["fused"][1]}
        )
    if chunks := meta.get("chunking"):
        headers["X-Rerankd-Chunking"] = _header(
            "on", {key: chunks[key] for key in ("chunk_tokens", "chunks", "split_documents", "capped_documents")}
        )
    return headers
