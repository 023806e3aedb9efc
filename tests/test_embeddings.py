"""The embedding pre-filter: bi-encoder cosine similarity, with a bounded LRU cache of document embeddings."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from rerankd.config import Settings
from rerankd.engine.engine import Engine
from rerankd.first_stage import EmbeddingCache, EmbeddingScorer
from rerankd.metrics import Metrics
from rerankd.models import resolve_model
from rerankd.models.presets import packaged_default_path

QUERY = "embedded database"
DOCUMENTS = ["SQLite is an embedded SQL database.", "A strategy game.", "Key-value store library.", "A strategy game."]


def test_cache_is_a_bounded_lru_keyed_by_model_and_content() -> None:
    cache = EmbeddingCache(max_entries=2)
    a, b, c = (EmbeddingCache.key("m1", text) for text in ("a", "b", "c"))
    cache.put_many("m", {a: np.zeros(2), b: np.ones(2)})
    assert cache.get_many("m", [a])[0] is not None  # a is now the most recently used
    cache.put_many("m", {c: np.ones(2)})
    assert [v is not None for v in cache.get_many("m", [a, b, c])] == [True, False, True]
    assert len(cache) == 2
    assert EmbeddingCache.key("m1", "a") != EmbeddingCache.key("m2", "a")  # another model, another entry
    off = EmbeddingCache(max_entries=0)
    off.put_many("m", {a: np.zeros(2)})
    assert len(off) == 0


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    loaded = Engine.load(resolve_model("default"), Settings(backend="torch"))
    yield loaded
    loaded.close()


def test_scores_are_cosine_and_the_cache_serves_repeats(engine: Engine) -> None:
    metrics = Metrics()
    prefilter = EmbeddingScorer(engine, EmbeddingCache(100, metrics))
    cold = asyncio.run(prefilter.scores(QUERY, DOCUMENTS))
    warm = asyncio.run(prefilter.scores(QUERY, DOCUMENTS))

    reference = SentenceTransformer(str(packaged_default_path()), device="cpu").encode([QUERY, *DOCUMENTS])
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    np.testing.assert_allclose(cold, reference[1:] @ reference[0], atol=1e-5)
    np.testing.assert_allclose(cold, warm, atol=1e-6)  # the query alone pads differently: float noise only
    name = engine.spec.name
    assert metrics.embedding_cache_misses.labels(name)._value.get() == 4  # first call: all four missed
    assert metrics.embedding_cache_hits.labels(name)._value.get() == 4  # second call: all four hit
    assert len(prefilter.cache) == 3  # the repeated document is stored once


def test_a_cross_encoder_is_refused(ce_fixture_path) -> None:
    ce = Engine.load(resolve_model(str(ce_fixture_path)), Settings(backend="torch"))
    try:
        with pytest.raises(ValueError, match="must be a bi-encoder"):
            EmbeddingScorer(ce, EmbeddingCache(10))
    finally:
        ce.close()
