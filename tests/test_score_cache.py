"""The score cache: a repeated input skips inference and gives the same scores; the cache stays within its bytes."""

from __future__ import annotations

import asyncio

import numpy as np
from conftest import wait_until

from rerankd.config import Settings
from rerankd.engine.engine import Engine
from rerankd.engine.score_cache import ENTRY_OVERHEAD_BYTES, ScoreCache
from rerankd.metrics import Metrics
from rerankd.models import resolve_model

QUERY = "embedded database"
DOCUMENTS = [f"document {i}: an SQL database library, item {i}" for i in range(20)]


def test_repeated_pairs_skip_inference_and_score_the_same(ce_fixture_path) -> None:
    metrics = Metrics()
    engine = Engine.load(resolve_model("ce-fixture"), Settings(warmup_seconds=0), metrics)
    try:

        async def scores(query: str, documents: list[str]) -> np.ndarray:
            return await engine.score(await engine.prepare(query, documents), raw=True)

        first = asyncio.run(scores(QUERY, DOCUMENTS))
        again = asyncio.run(scores(QUERY, DOCUMENTS[::-1]))  # the same pairs in another order: all hits
        np.testing.assert_array_equal(again, first[::-1])
        mixed = asyncio.run(scores(QUERY, [*DOCUMENTS[:5], "a new document about games"]))
        np.testing.assert_array_equal(mixed[:5], first[:5])
        other_query = asyncio.run(scores("a strategy game", DOCUMENTS[:3]))  # another query: other inputs
        assert not np.array_equal(other_query, first[:3])
        hits = metrics.registry.get_sample_value("rerankd_score_cache_hits_total", {"model": engine.spec.name})
        misses = metrics.registry.get_sample_value("rerankd_score_cache_misses_total", {"model": engine.spec.name})
        assert (hits, misses) == (25, 24)  # 20 + 5 hits; 20 + 1 + 3 inputs the model ran
    finally:
        engine.close()


def test_a_disabled_cache_runs_every_input(ce_fixture_path) -> None:
    engine = Engine.load(resolve_model("ce-fixture"), Settings(warmup_seconds=0, score_cache_mb=0))
    try:
        for _ in range(2):
            asyncio.run(engine.score(asyncio.run(engine.prepare(QUERY, DOCUMENTS))))
        assert engine.cache is None
        wait_until(lambda: engine.stats().batches_done >= 2, timeout=10)  # the counter follows the answers
    finally:
        engine.close()


def test_the_cache_is_bounded_in_bytes_least_recently_used_first_out() -> None:
    row_bytes = np.zeros(1, dtype=np.float32).nbytes + ENTRY_OVERHEAD_BYTES
    cache = ScoreCache(max_bytes=10 * row_bytes)
    keys = [bytes([i]) * 16 for i in range(30)]
    for key in keys:
        cache.put_many([key], np.ones((1, 1), dtype=np.float32))
        cache.get_many([keys[0]])  # keeps the first one recently used
    assert cache.bytes <= 10 * row_bytes
    found = cache.get_many(keys)
    assert found[0] is not None and found[-1] is not None and found[1] is None
