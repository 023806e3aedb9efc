"""The embedding first stage: cosine similarity of a bi-encoder's query and document embeddings.

A bi-encoder as large as the cross-encoder saves little when it embeds every document of every request, but
real RAG systems send the same documents again and again: document embeddings are kept in a bounded LRU cache
keyed by model version and content hash, so a warm request embeds only its query.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import numpy as np
from cachetools import LRUCache

from rerankd.engine.engine import Engine, cosine
from rerankd.metrics import Metrics

CacheKey = tuple[str, bytes]


class EmbeddingCache:
    """Least-recently-used document embeddings, at most `max_entries` (0 keeps nothing). Thread-safe: `LRUCache`
    is not, and a lookup reorders it, so every access holds the lock."""

    def __init__(self, max_entries: int, metrics: Metrics | None = None) -> None:
        self.max_entries = max_entries
        self._metrics = metrics
        self._entries: LRUCache[CacheKey, np.ndarray] = LRUCache(maxsize=max(1, max_entries))
        self._lock = threading.Lock()

    @staticmethod
    def key(model: str, text: str) -> CacheKey:
        return model, hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, model: str, keys: Sequence[CacheKey]) -> list[np.ndarray | None]:
        with self._lock:
            found = [self._entries.get(key) for key in keys]
        if self._metrics:
            hits = sum(vector is not None for vector in found)
            self._metrics.embedding_cache_hits.labels(model).inc(hits)
            self._metrics.embedding_cache_misses.labels(model).inc(len(found) - hits)
        return found

    def put_many(self, model: str, items: dict[CacheKey, np.ndarray]) -> None:
        if self.max_entries == 0:
            return
        with self._lock:
            self._entries.update(items)
            size = len(self._entries)
        if self._metrics:
            self._metrics.embedding_cache_entries.labels(model).set(size)


class EmbeddingScorer:
    """Scores documents by cosine similarity to the query with a bi-encoder `engine`, caching documents."""

    def __init__(self, engine: Engine, cache: EmbeddingCache) -> None:
        if engine.spec.kind != "bi-encoder":
            raise ValueError(f"embedding_model: {engine.spec.name} is a {engine.spec.kind}; it must be a bi-encoder")
        self.engine = engine
        self.cache = cache
        self.model = f"{engine.spec.name}@{engine.spec.revision}"  # a new model version misses the cache

    async def scores(self, query: str, documents: Sequence[str]) -> np.ndarray:
        """One cosine similarity per document, in document order."""
        name = self.engine.spec.name
        keys = [self.cache.key(self.model, document) for document in documents]
        found = self.cache.get_many(name, keys)
        missing: dict[CacheKey, str] = {}  # repeated documents of one request are embedded once
        for key, document, vector in zip(keys, documents, found, strict=True):
            if vector is None:
                missing.setdefault(key, document)
        embedded = await self.engine.embed([query, *missing.values()])
        fresh = dict(zip(missing, embedded[1:], strict=True))
        self.cache.put_many(name, fresh)
        vectors = [vector if vector is not None else fresh[key] for key, vector in zip(keys, found, strict=True)]
        matrix = np.stack(vectors)
        return cosine(matrix, embedded[0])
