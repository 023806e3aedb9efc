"""The first stage: a score per document that picks the candidates the model scores (and that fusion mixes in).

Its source, in order: the client's `first_stage_scores`, a served `first_stage_model` (a cascade), BM25 over the
request's documents; the `bi-encoder` strategy cuts by embeddings instead. Wire names keep the older word
"pre-filter" (`meta.prefilter`, `cut_by_prefilter`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from rerankd.engine.engine import Engine
from rerankd.engine.tokenize import Tokens
from rerankd.first_stage import EmbeddingScorer, bm25_scores
from rerankd.first_stage.corpus_stats import Bm25Statistics
from rerankd.pipeline.costs import CostModel
from rerankd.pipeline.run.options import Options
from rerankd.vocabulary import ExecutedStrategy

Embeddings = Callable[[], Awaitable[EmbeddingScorer]]  # the server's embedding first stage, lent per request


class Bm25Scorer:
    """BM25 with the statistics a model has (a file, learned from its requests, else each request's own
    documents); it teaches the cost model its speed."""

    def __init__(self, statistics: Bm25Statistics, costs: CostModel, *, max_chars: int = 20_000) -> None:
        self.statistics = statistics
        self._costs = costs
        self._max_chars = max_chars

    async def observe(self, model: str, documents: Sequence[str]) -> None:
        """Every request's documents teach its model's statistics (when learning is on)."""
        if self.statistics.learn_bytes:
            await asyncio.to_thread(self.statistics.observe, model, self._texts(documents))

    async def scores(self, model: str, query: str, documents: Sequence[str]) -> tuple[np.ndarray, dict[str, Any]]:
        """BM25 of `documents` for `query`, and which statistics scored them (`meta.bm25_statistics`)."""
        started = time.perf_counter()
        statistics, source = self.statistics.choose(model)
        scores = await asyncio.to_thread(bm25_scores, query, self._texts(documents), statistics)
        self._costs.learn_bm25(len(documents), time.perf_counter() - started)
        return scores, {"source": source, "documents": len(documents) if statistics is None else statistics.documents}

    def _texts(self, documents: Sequence[str]) -> list[str]:
        # BM25 indexes about 1 MB of text a second here: a document's first max_chars decide its score.
        return [document[: self._max_chars] for document in documents]


class FirstStage:
    """A request's first-stage scores: the client's, else a served first-stage model's (a cascade), else BM25 over
    its documents; computed at most once, when the plan cuts or fusion needs them."""

    def __init__(
        self,
        bm25: Bm25Scorer,
        embeddings: Embeddings,
        model: str,
        query: str,
        documents: Sequence[str],
        options: Options,
    ) -> None:
        self._bm25, self._embeddings = bm25, embeddings
        self._model, self._query, self._documents = model, query, documents
        self.statistics: dict[str, Any] | None = None  # which BM25 statistics scored, once BM25 ran
        self._scores = options.first_stage_scores
        self.model: Engine | None = None if self._scores is not None else options.first_stage_model
        self._done = options.first_stage_done
        self._query_tokens: Tokens | None = None
        if self._scores is not None:
            self.source = "first_stage_scores"
        else:
            self.source = f"model:{self.model.spec.name}" if self.model else "bm25"

    @property
    def known(self) -> bool:
        """Whether the scores came with the request (nothing to compute)."""
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
            if self._done is not None:  # its queue is free now (admission)
                self._done()
        elif self._scores is None:
            self._scores, self.statistics = await self._bm25.scores(self._model, self._query, self._documents)
        return self._scores

    async def cut_scores(self, strategy: ExecutedStrategy) -> tuple[np.ndarray, str]:
        """The scores that pick `strategy`'s candidates, and their source (`meta.prefilter`): the first stage's for
        `hybrid`, the embeddings' for `bi-encoder`."""
        if strategy == "hybrid":
            return await self.scores(), self.source
        embeddings = await self._embeddings()
        return await embeddings.scores(self._query, self._documents), f"embeddings:{embeddings.engine.spec.name}"
