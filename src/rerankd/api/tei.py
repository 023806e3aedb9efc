"""Hugging Face text-embeddings-inference's rerank API: `POST /rerank` -> `[{index, score, text?}]`.

Unlike TEI, `truncate` defaults to true (as sentence-transformers does); with `truncate: false` an input over the
model's window is a 413, as in TEI.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import ConfigDict, Field

from rerankd.api.auth import require_api_key
from rerankd.api.calls import rerank_for
from rerankd.api.errors import ERROR_RESPONSES
from rerankd.api.strategy import ScoreDetails, StrategyFields, score_details
from rerankd.errors import InvalidRequest
from rerankd.pipeline.types import RerankRequest

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["rerank"], responses=ERROR_RESPONSES)


class TeiRequest(StrategyFields):
    model_config = ConfigDict(extra="ignore")

    query: str
    texts: list[str]
    raw_scores: bool = Field(default=False, description="Logits instead of sigmoid scores.")
    return_text: bool = False
    truncate: bool = Field(default=True, description="Cut inputs to the model's window (else 413).")
    truncation_direction: Literal["Right", "Left", "right", "left"] = "Right"
    model: str | None = None


class TeiRank(ScoreDetails):
    index: int
    score: float
    text: str | None = None


@router.post("/rerank", response_model=list[TeiRank], response_model_exclude_none=True)
async def rerank_tei(body: TeiRequest, request: Request, response: Response) -> list[TeiRank]:
    """TEI rerank."""
    if body.truncation_direction.lower() == "left":
        raise InvalidRequest("truncation_direction: only 'Right' is supported")
    result = await rerank_for(
        request,
        response,
        RerankRequest(
            body.query,
            body.texts,
            body.model,
            raw_scores=body.raw_scores,
            truncate=body.truncate,
            documents_field="texts",
            **body.strategy_fields(),
        ),
    )
    return [
        TeiRank(
            index=r.index, score=r.score, text=body.texts[r.index] if body.return_text else None, **score_details(r)
        )
        for r in result.results
    ]
