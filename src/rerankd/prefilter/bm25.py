"""BM25 over a fixed set of texts (`bm25s`, Lucene's formula), with English stop words and Snowball stemming.

The same index serves a request's own documents (the hybrid pre-filter and fusion) and a whole corpus (`eval`'s
first stage); only the texts differ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import bm25s
import numpy as np
import Stemmer

# bm25s sets its logger to DEBUG on import, which would log a line for every request's index.
logging.getLogger("bm25s").setLevel(logging.WARNING)


class Bm25:
    """An index of `texts`; scores are BM25 with this set's own document frequencies."""

    def __init__(self, texts: Sequence[str]) -> None:
        self._stemmer = Stemmer.Stemmer("english")
        self.size = len(texts)
        tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=self._stemmer, show_progress=False)
        self._index: bm25s.BM25 | None = None
        if tokens.vocab:  # bm25s cannot index texts without a single term (empty, or only stop words)
            self._index = bm25s.BM25()
            self._index.index(tokens, show_progress=False)

    def _query_tokens(self, queries: Sequence[str]) -> list[list[str]]:
        return bm25s.tokenize(
            list(queries), stopwords="en", stemmer=self._stemmer, return_ids=False, show_progress=False
        )

    def scores(self, query: str) -> np.ndarray:
        """One score per text (0 where no query term occurs), float32."""
        known = self._index.get_tokens_ids(self._query_tokens([query])[0]) if self._index else []
        if not known:  # only stop words, terms absent from every text, or texts without terms
            return np.zeros(self.size, dtype=np.float32)
        return self._index.get_scores(known).astype(np.float32)

    def top(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best `k` texts per query: `(indices, scores)`, each `(len(queries), k)`, best first."""
        k = min(k, self.size)
        if self._index is None:
            return np.tile(np.arange(k), (len(queries), 1)), np.zeros((len(queries), k), dtype=np.float32)
        indices, scores = self._index.retrieve(self._query_tokens(queries), k=k, show_progress=False)
        return np.asarray(indices), np.asarray(scores, dtype=np.float32)


def bm25_scores(query: str, texts: Sequence[str]) -> np.ndarray:
    """BM25 of `query` against `texts`, indexed on the spot (a request's documents)."""
    return Bm25(texts).scores(query)
