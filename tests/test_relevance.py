"""The real bi-encoder ranks a Debian package's own description first among other descriptions."""

from __future__ import annotations

import json
import random

import httpx
import pytest
from conftest import DEBIAN_DATA

pytestmark = pytest.mark.skipif(not DEBIAN_DATA.is_dir(), reason="Debian descriptions data set not present")


def load_cases(count: int = 6, distractors: int = 9) -> list[tuple[str, str, list[str]]]:
    corpus = {}
    with (DEBIAN_DATA / "corpus.jsonl").open() as lines:
        for line in lines:
            doc = json.loads(line)
            corpus[doc["_id"]] = doc["text"]
    relevant = {}
    for line in (DEBIAN_DATA / "qrels" / "dev.tsv").read_text().splitlines()[1:]:
        query_id, doc_id, _ = line.split("\t")
        relevant[query_id] = doc_id
    queries = [json.loads(line) for line in (DEBIAN_DATA / "queries-dev.jsonl").read_text().splitlines()[:count]]
    rng = random.Random(7)
    ids = sorted(corpus)
    cases = []
    for query in queries:
        answer = corpus[relevant[query["_id"]]]
        others = [corpus[i] for i in rng.sample(ids, distractors) if corpus[i] != answer]
        cases.append((query["text"], answer, others))
    return cases


def test_relevant_description_ranks_first(server: str) -> None:
    for query, answer, others in load_cases():
        documents = [*others, answer]
        results = httpx.post(
            f"{server}/v2/rerank", json={"model": "default", "query": query, "documents": documents}, timeout=60
        ).json()["results"]
        assert results[0]["index"] == len(documents) - 1, query
