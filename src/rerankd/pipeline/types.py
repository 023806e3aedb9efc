"""The wire types: what a rerank request is, what comes back, the `RerankService` protocol that answers it, and
the checks every dialect applies before any work.

Kept free of model code (no transformers, bm25s, torch or onnxruntime, directly or through package imports), so the
API dialects and the fleet's ingress can use them without loading the engine stack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from rerankd.errors import InvalidRequest, PayloadTooLarge
from rerankd.pipeline.fusion import best_first
from rerankd.vocabulary import STRATEGIES, FusionMethod, Strategy

State = Literal["loading", "ready", "failed"]


@dataclass(frozen=True)
class RerankRequest:
    query: str
    documents: Sequence[str]
    model: str | None = None
    top_n: int | None = None
    raw_scores: bool = False
    truncate: bool = True
    max_tokens_per_doc: int | None = None
    documents_field: str = "documents"  # the dialect's name for the list, so errors name the right field
    # Strategies (docs/strategies.md); None = the server's setting of the same name.
    strategy: Strategy | None = None
    latency_budget_ms: float | None = None
    candidates: int | None = None  # documents a pre-filter passes to the model (a cap, for every strategy but direct)
    fusion: FusionMethod | None = None
    fusion_weight: float | None = None
    first_stage_scores: Sequence[float] | None = None  # the client's own retrieval score per document
    chunking: bool | None = None  # None: the `chunking` setting, or on when max_chunks_per_doc is given
    max_chunks_per_doc: int | None = None
    timeout_ms: float | None = None  # None: the server's request_timeout_seconds
    instruction: str | None = None  # an LLM reranker's task description; None: the model's default
    first_stage_model: str | None = None  # a served model as the hybrid strategy's pre-filter (a cascade)
    min_score: float | None = None  # documents whose final score is below it are left out of the answer


@dataclass(frozen=True)
class Ranked:
    index: int
    score: float
    model_score: float | None = None  # the model's own score, when `score` is fused
    first_stage_score: float | None = None  # the first stage's score, when fused
    cut_by_prefilter: bool = False  # not scored by the model; listed after the scored documents


@dataclass(frozen=True)
class RerankResult:
    model: str
    results: list[Ranked]
    tokens: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    id: str
    kind: str
    aliases: tuple[str, ...]
    max_length: int
    engine: str


class RerankService(Protocol):
    """What the HTTP layer needs: answer requests, say whether it is ready, list its models."""

    @property
    def state(self) -> State: ...

    def start(self) -> None:
        """Begin loading without blocking; `state` turns `ready` when done."""

    async def rerank(self, request: RerankRequest) -> RerankResult: ...

    def models(self) -> list[ModelInfo]: ...

    @property
    def overloaded(self) -> bool:
        """Whether new work would be turned away now (readiness reports it)."""

    def health_problem(self) -> str | None:
        """Why the process should be restarted, or None."""

    def close(self) -> None: ...


MAX_CHUNKS_PER_DOC = 100  # bounds one request's work: documents x chunks pairs
MIN_TIMEOUT_MS = 1  # a deadline that rounds to 0 s would read as "no deadline"


def check_limits(request: RerankRequest, max_documents: int, max_query_chars: int | None = None) -> None:
    """Rules every dialect shares, checked before any expensive step; messages name the field and the limit."""
    name = request.documents_field
    if not request.query.strip():
        raise InvalidRequest("query: must not be empty")
    for field_name, text in (("query", request.query), ("instruction", request.instruction or "")):
        if max_query_chars is not None and len(text) > max_query_chars:
            raise PayloadTooLarge(
                f"{field_name}: at most {max_query_chars} characters (max_query_chars), got {len(text)}"
            )
    if not request.documents:
        raise InvalidRequest(f"{name}: must hold at least one document")
    if len(request.documents) > max_documents:
        raise InvalidRequest(
            f"{name}: at most {max_documents} documents per request (max_documents), got {len(request.documents)}"
        )
    if request.top_n is not None and request.top_n < 1:
        raise InvalidRequest(f"top_n: must be at least 1, got {request.top_n}")
    if request.max_tokens_per_doc is not None and request.max_tokens_per_doc < 1:
        raise InvalidRequest(f"max_tokens_per_doc: must be at least 1, got {request.max_tokens_per_doc}")
    _check_strategy_fields(request)
    check_unicode("query", request.query)
    if request.instruction is not None:
        check_unicode("instruction", request.instruction)
    for index, document in enumerate(request.documents):
        check_unicode(f"{name}[{index}]", document)


def check_unicode(field: str, text: str) -> None:
    """Text must be encodable as UTF-8: JSON can carry lone UTF-16 surrogates (\\ud800) that no tokenizer can
    read. Rejected rather than replaced, so that what is scored is what was sent."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(
            f"{field}: lone surrogate U+{ord(text[exc.start]):04X} at character {exc.start} is not valid Unicode; "
            "send surrogates only as pairs"
        ) from None


def _check_strategy_fields(request: RerankRequest) -> None:
    if request.strategy is not None and request.strategy not in STRATEGIES:
        raise InvalidRequest(f"strategy: must be one of {', '.join(STRATEGIES)}, got {request.strategy!r}")
    if request.fusion is not None and request.fusion not in ("none", "zscore", "rrf"):
        raise InvalidRequest(f"fusion: must be one of none, zscore, rrf, got {request.fusion!r}")
    budget = request.latency_budget_ms
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise InvalidRequest(f"latency_budget_ms: must be a number above 0, got {budget}")
    if request.candidates is not None and request.candidates < 1:
        raise InvalidRequest(f"candidates: must be at least 1, got {request.candidates}")
    weight = request.fusion_weight
    if weight is not None and not (0 <= weight <= 1):
        raise InvalidRequest(f"fusion_weight: must be between 0 and 1, got {weight}")
    chunks = request.max_chunks_per_doc
    if chunks is not None and not (1 <= chunks <= MAX_CHUNKS_PER_DOC):
        raise InvalidRequest(f"max_chunks_per_doc: must be between 1 and {MAX_CHUNKS_PER_DOC}, got {chunks}")
    timeout = request.timeout_ms
    if timeout is not None and not (math.isfinite(timeout) and timeout >= MIN_TIMEOUT_MS):
        raise InvalidRequest(f"timeout_ms: must be a number of at least {MIN_TIMEOUT_MS}, got {timeout}")
    if request.min_score is not None and not math.isfinite(request.min_score):
        raise InvalidRequest(f"min_score: must be a finite number, got {request.min_score}")
    scores = request.first_stage_scores
    if scores is not None:
        if len(scores) != len(request.documents):
            raise InvalidRequest(
                f"first_stage_scores: needs one score per document ({len(request.documents)}), got {len(scores)}"
            )
        bad = next((i for i, score in enumerate(scores) if not math.isfinite(score)), None)
        if bad is not None:
            raise InvalidRequest(f"first_stage_scores[{bad}]: must be a finite number, got {scores[bad]}")


def request_deadline(timeout_ms: float | None, server_seconds: float) -> tuple[float | None, str]:
    """A request's deadline in seconds (None: none) and the setting it comes from: `timeout_ms` (checked to be at
    least `MIN_TIMEOUT_MS`), never later than the server's `request_timeout_seconds` (0 = no server deadline)."""
    if timeout_ms is None or (server_seconds and timeout_ms / 1000 >= server_seconds):
        return server_seconds or None, "request_timeout_seconds"
    return timeout_ms / 1000, "timeout_ms"


def rank(scores: np.ndarray, top_n: int | None) -> list[Ranked]:
    """Best first; equal scores keep their original order."""
    return [Ranked(int(i), float(scores[i])) for i in best_first(scores)[:top_n]]
