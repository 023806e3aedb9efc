"""The real bi-encoder ranks a Debian package's own description first among other descriptions."""

from __future__ import annotations

import random

import httpx
import pytest
from conftest import DEBIAN_DATA

from rerankd.datasets import load_beir

pytestmark = pytest.mark.skipif(not DEBIAN_DATA.is_dir(), reason=f"the Debian data set is not at {DEBIAN_DATA}")


def load_cases(count: int = 6, distractors: int = 9) -> list[tuple[str, str, list[str]]]:
    data = load_beir(DEBIAN_DATA)
    rng = random.Random(7)
    ids = sorted(data.corpus)
    cases = []
    for query_id in list(data.queries)[:count]:
        answer = data.corpus[next(iter(data.qrels[query_id]))]
        others = [data.corpus[i] for i in rng.sample(ids, distractors) if data.corpus[i] != answer]
        cases.append((data.queries[query_id], answer, others))
    return cases


def test_relevant_description_ranks_first(server: str) -> None:
    for query, answer, others in load_cases():
        documents = [*others, answer]
        results = httpx.post(
            f"{server}/v2/rerank", json={"model": "default", "query": query, "documents": documents}, timeout=60
        ).json()["results"]
        assert results[0]["index"] == len(documents) - 1, query
