"""Cohere's rerank API: v2 (`POST /v2/rerank`) and v1 (`POST /v1/rerank`), whose shape Jina shares.

The official `cohere` SDK works against this server unchanged. Fields the SDK may send that do not apply
(`relevant_spans`, `priority`, `rank_fields`) are accepted and ignored.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from rerankd.api.auth import require_api_key
from rerankd.api.calls import rerank_for
from rerankd.api.errors import ERROR_RESPONSES
from rerankd.api.strategy import ScoreDetails, StrategyFields, score_details
from rerankd.pipeline.types import RerankRequest, RerankResult

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["rerank"], responses=ERROR_RESPONSES)


class TextDocument(BaseModel):
    model_config = ConfigDict(strict=True)

    text: str


class CohereV2Request(StrategyFields):
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, description="A served model's id, short name, or `default`.")
    query: str
    documents: list[str]
    top_n: int | None = Field(default=None, description="Return only the best n results.")
    max_tokens_per_doc: int | None = Field(default=None, description="Cut each document to this many tokens.")
    return_documents: bool = False


class CohereV1Request(CohereV2Request):
    documents: list[str | TextDocument]  # type: ignore[assignment]


class RerankItem(ScoreDetails):
    index: int
    relevance_score: float
    document: TextDocument | None = None


class CohereV2Response(BaseModel):
    id: str
    results: list[RerankItem]
    meta: dict[str, Any]


class Usage(BaseModel):
    total_tokens: int
    prompt_tokens: int


class CohereV1Response(CohereV2Response):
    model: str
    usage: Usage


def _items(result: RerankResult, texts: list[str], with_documents: bool) -> list[RerankItem]:
    return [
        RerankItem(
            index=r.index,
            relevance_score=r.score,
            document=TextDocument(text=texts[r.index]) if with_documents else None,
            **score_details(r),
        )
        for r in result.results
    ]


def _meta(version: str, result: RerankResult) -> dict[str, Any]:
    return {
        "api_version": {"version": version},
        "billed_units": {"search_units": 1},
        "tokens": {"input_tokens": result.tokens, "output_tokens": 0},
        **result.meta,
    }


async def _rerank(request: Request, response: Response, body: CohereV2Request, texts: list[str]) -> RerankResult:
    call = RerankRequest(
        body.query, texts, body.model, body.top_n, max_tokens_per_doc=body.max_tokens_per_doc, **body.strategy_fields()
    )
    return await rerank_for(request, response, call)


@router.post("/v2/rerank", response_model=CohereV2Response, response_model_exclude_none=True)
async def rerank_v2(body: CohereV2Request, request: Request, response: Response) -> CohereV2Response:
    """Cohere v2 rerank."""
    result = await _rerank(request, response, body, body.documents)
    return CohereV2Response(
        id=str(uuid.uuid4()), results=_items(result, body.documents, body.return_documents), meta=_meta("2", result)
    )


@router.post("/v1/rerank", response_model=CohereV1Response, response_model_exclude_none=True)
async def rerank_v1(body: CohereV1Request, request: Request, response: Response) -> CohereV1Response:
    """Cohere v1 rerank; also Jina's `/v1/rerank` (same request, plus `usage` in the answer)."""
    texts = [doc if isinstance(doc, str) else doc.text for doc in body.documents]
    result = await _rerank(request, response, body, texts)
    return CohereV1Response(
        id=str(uuid.uuid4()),
        model=result.model,
        results=_items(result, texts, body.return_documents),
        meta=_meta("1", result),
        usage=Usage(total_tokens=result.tokens, prompt_tokens=result.tokens),
    )
