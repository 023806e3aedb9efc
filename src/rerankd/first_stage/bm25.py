"""BM25 (`bm25s`, Lucene's formula, k1 = 1.5, b = 0.75), with English stop words and Snowball stemming.

The same index serves a request's own documents (the hybrid pre-filter and fusion) and a whole corpus (`eval`'s
first stage); only the texts differ. A request's documents alone make poor statistics (they were all retrieved for
the query's terms, so a rare term looks common), so `bm25_scores` also takes `CorpusStatistics` from elsewhere: a
corpus counted by `rerankd corpus-stats`, or the documents the server has been sent (`corpus_stats.py`).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Protocol

import bm25s
import numpy as np
import Stemmer

# bm25s sets its logger to DEBUG on import, which would log a line for every request's index.
logging.getLogger("bm25s").setLevel(logging.WARNING)

K1, B = 1.5, 0.75  # bm25s's defaults, the usual Lucene values


def terms(texts: Sequence[str]) -> list[list[str]]:
    """Each text's BM25 terms: lower-cased words of 2+ characters, English stop words dropped, stemmed. Every BM25
    here (the index, the scores with outside statistics, the counted statistics) reads texts through this."""
    stemmer = Stemmer.Stemmer("english")  # one per call: a stemmer's cache is not shared between threads
    return bm25s.tokenize(list(texts), stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)


class CorpusStatistics(Protocol):
    """What BM25 needs to know about a collection beyond the documents it scores."""

    @property
    def documents(self) -> int: ...

    @property
    def average_length(self) -> float:
        """Mean terms per document."""

    def document_frequencies(self, terms: Sequence[str]) -> np.ndarray:
        """Per term, the number of documents that contain it (an estimate is fine)."""


class Bm25:
    """An index of `texts`; scores are BM25 with this set's own document frequencies."""

    def __init__(self, texts: Sequence[str]) -> None:
        self._stemmer = Stemmer.Stemmer("english")
        self.size = len(texts)
        tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=self._stemmer, show_progress=False)
        self._index: bm25s.BM25 | None = None
        if tokens.vocab:  # bm25s cannot index texts without a single term (empty, or only stop words)
            self._index = bm25s.BM25(k1=K1, b=B)
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


def bm25_scores(query: str, texts: Sequence[str], statistics: CorpusStatistics | None = None) -> np.ndarray:
    """BM25 of `query` against `texts`: with the texts' own statistics (indexed on the spot), or `statistics`'."""
    if statistics is None:
        return Bm25(texts).scores(query)
    return scores_with(statistics, terms([query])[0], terms(texts))


def scores_with(statistics: CorpusStatistics, query: Sequence[str], documents: Sequence[Sequence[str]]) -> np.ndarray:
    """Lucene's BM25 of the `query` terms in each document's terms, its IDF and mean length from `statistics`:
    sum over query terms (a repeated term counts again, as in bm25s) of idf * tf / (tf + k1 * (1 - b + b * dl / avgdl)),
    idf = ln(1 + (N - df + 0.5) / (df + 0.5))."""
    scores = np.zeros(len(documents), dtype=np.float64)
    wanted = Counter(query)
    if not wanted or not documents:
        return scores.astype(np.float32)
    unique = list(wanted)
    n = statistics.documents
    df = np.minimum(statistics.document_frequencies(unique).astype(np.float64), n)
    idf = np.log1p((n - df + 0.5) / (df + 0.5))
    lengths = np.array([len(document) for document in documents], dtype=np.float64)
    norm = K1 * (1 - B + B * lengths / (statistics.average_length or 1.0))
    counts = [Counter(document) for document in documents]
    for term, weight, term_idf in zip(unique, (wanted[t] for t in unique), idf, strict=True):
        tf = np.array([count.get(term, 0) for count in counts], dtype=np.float64)
        scores += weight * term_idf * tf / (tf + norm)
    return scores.astype(np.float32)
