"""BM25 corpus statistics: counted from a corpus (exact, by hand), learned from traffic (bounded memory, re-sent
documents counted once, never below the truth), and what a real server says it used."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import httpx
import numpy as np
import pytest

from rerankd.api import create_app
from rerankd.config import Settings
from rerankd.errors import RerankdError
from rerankd.first_stage.bm25 import bm25_scores, terms
from rerankd.first_stage.corpus_stats import Bm25Statistics, CountedStatistics, LearnedStatistics
from rerankd.metrics import Metrics
from rerankd.pipeline.service import LocalService

CORPUS = [
    "SQLite is a C library that implements an embedded SQL database engine.",
    "PostgreSQL is an object-relational SQL database server.",
    "A real-time strategy game of ancient warfare.",
    "Berkeley DB is an embedded key-value database library.",
    "Fonts for the terminal.",
    "A library of sound effects for games.",
]


def words(count: int, seed: int) -> list[str]:
    """`count` distinct made-up documents of 20-60 words from a 5,000-word vocabulary."""
    rng = random.Random(seed)
    vocabulary = [f"w{i}x" for i in range(5000)]
    return [f"doc{seed}-{i} " + " ".join(rng.choices(vocabulary, k=rng.randint(20, 60))) for i in range(count)]


def test_counted_statistics_and_a_score_by_hand() -> None:
    counted = CountedStatistics.count(CORPUS)
    assert counted.documents == 6
    assert counted.frequencies["databas"] == 3 and counted.frequencies["librari"] == 3  # Snowball stems
    assert counted.average_length == pytest.approx(sum(len(d) for d in terms(CORPUS)) / 6)
    # "sql" in document 1 (tf 1, 7 terms): idf = ln(1 + (6 - 2 + 0.5) / (2 + 0.5)), k1 = 1.5, b = 0.75.
    length = len(terms([CORPUS[1]])[0])
    idf = math.log(1 + 4.5 / 2.5)
    expected = idf * 1 / (1 + 1.5 * (0.25 + 0.75 * length / counted.average_length))
    assert bm25_scores("sql", [CORPUS[1]], counted)[0] == pytest.approx(expected, rel=1e-6)


def test_scores_with_a_requests_own_statistics_are_bm25s_own() -> None:
    """The outside-statistics path is the same BM25 as the bm25s index (a repeated query term counts twice)."""
    documents = words(40, seed=1)
    query = " ".join(documents[3].split()[1:6] + documents[7].split()[1:3] + documents[3].split()[1:2])
    np.testing.assert_allclose(
        bm25_scores(query, documents, CountedStatistics.count(documents)), bm25_scores(query, documents), rtol=1e-5
    )


def test_other_statistics_change_the_ranking_a_request_alone_gets_wrong() -> None:
    """Every candidate says "library"; only the corpus knows it is common and "embedded" is rare."""
    request = ["embedded library for key-value data", "library library library of fonts"]
    corpus = CountedStatistics.count([*CORPUS, *(f"library number {i}" for i in range(50))])
    assert np.argmax(bm25_scores("embedded library", request, corpus)) == 0
    assert bm25_scores("embedded library", request, corpus)[0] > 2 * bm25_scores("embedded library", request, corpus)[1]


@pytest.mark.parametrize("name", ["stats.json", "stats.json.gz"])
def test_file_round_trip_and_refusals(tmp_path: Path, name: str) -> None:
    counted = CountedStatistics.count(CORPUS)
    counted.save(tmp_path / name)
    assert CountedStatistics.load(tmp_path / name) == counted
    record = json.loads((tmp_path / "stats.json").read_text()) if name == "stats.json" else None
    if record is not None:
        record["tokenizer"] = "whitespace"
        (tmp_path / "other.json").write_text(json.dumps(record))
        with pytest.raises(RerankdError, match="another tokenizer"):
            CountedStatistics.load(tmp_path / "other.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(RerankdError, match="not a statistics file"):
        CountedStatistics.load(tmp_path / "bad.json")


def test_learned_is_exact_with_room_and_counts_a_resent_document_once() -> None:
    learned = LearnedStatistics(1 << 20)
    for _ in range(1000):
        learned.observe(CORPUS)
    counted = CountedStatistics.count(CORPUS)
    assert learned.documents == 6 and learned.average_length == pytest.approx(counted.average_length)
    vocabulary = sorted(counted.frequencies)
    np.testing.assert_array_equal(learned.document_frequencies(vocabulary), counted.document_frequencies(vocabulary))


def test_learned_never_below_the_truth_when_crowded() -> None:
    """768 counters a row for ~5,500 terms: they collide, so estimates rise, but never fall below the true count."""
    documents = words(600, seed=2)
    learned = LearnedStatistics(16 * 1024)
    learned.observe(documents)
    assert learned.documents == 600  # the seen-document filter (4 KiB) took none for seen
    counted = CountedStatistics.count(documents)
    vocabulary = sorted(counted.frequencies)
    estimate, truth = learned.document_frequencies(vocabulary), counted.document_frequencies(vocabulary)
    assert np.all(estimate >= truth)
    assert np.any(estimate > truth)  # crowded indeed


@pytest.mark.slow  # 17 s of counting under tracemalloc: out of the edit loop (make test-fast)
def test_learned_memory_stays_within_its_setting() -> None:
    """64 KiB of setting, 20,000 distinct documents (the seen-document filter fills and starts again twice): what
    the estimate holds after learning stays within the setting."""
    setting = 64 * 1024
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        learned = LearnedStatistics(setting)
        for seed in range(20):
            learned.observe(words(1000, seed=100 + seed))
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in after.compare_to(before, "filename") if stat.size_diff > 0)
    assert learned.nbytes <= setting
    assert held <= setting + 16 * 1024, f"{held} bytes held for a {setting}-byte setting"
    assert learned.documents >= 19_500  # ~1% of new documents are taken for seen ones


def test_persisted_estimate_is_read_back(tmp_path: Path) -> None:
    first = Bm25Statistics(learn_bytes=1 << 16, warm_documents=3, store=tmp_path)
    first.observe("m", CORPUS)
    first.save()
    second = Bm25Statistics(learn_bytes=1 << 16, warm_documents=3, store=tmp_path)
    learned = second.learned("m")
    assert learned.documents == 6
    second.observe("m", CORPUS)  # the saved filter remembers them
    assert learned.documents == 6
    statistics, source = second.choose("m")
    assert source == "learned" and statistics is learned
    assert Bm25Statistics(learn_bytes=1 << 17, store=tmp_path).learned("m").documents == 0  # another size: ignored


@pytest.mark.slow
def test_corpus_stats_command_reads_beir_and_text(tmp_path: Path) -> None:
    (tmp_path / "beir").mkdir()
    rows = [{"_id": str(i), "title": "", "text": text} for i, text in enumerate(CORPUS)]
    rows.append({"_id": "0", "title": "", "text": CORPUS[0]})  # a repeated id is one document, as eval reads it
    (tmp_path / "beir" / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "lines.txt").write_text("\n".join(CORPUS) + "\n\n")
    expected = CountedStatistics.count(CORPUS)
    for source in ("beir", "lines.txt"):
        out = tmp_path / f"{source}.json"
        done = subprocess.run(
            [sys.executable, "-m", "rerankd.cli", "corpus-stats", str(tmp_path / source), "--output", str(out)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert CountedStatistics.load(out) == expected, source


def fused(url: str, documents: list[str], query: str = "embedded database library") -> dict:
    body = {"model": "ce-fixture", "query": query, "documents": documents, "fusion": "zscore"}
    response = httpx.post(f"{url}/v2/rerank", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def first_stage(answer: dict) -> np.ndarray:
    scores = np.empty(len(answer["results"]))
    for result in answer["results"]:
        scores[result["index"]] = result["first_stage_score"]
    return scores


def test_server_learns_from_traffic_then_says_so(ce_fixture_path: Path, thread_server) -> None:
    settings = Settings(model=["ce-fixture"], warmup_seconds=0, embedding_model="", corpus_stats_warm_documents=200)
    metrics = Metrics()
    service = LocalService(settings, metrics)
    service.load()
    try:
        with thread_server(create_app(settings, service, metrics)) as server:
            answer = fused(server.url, CORPUS)
            assert answer["meta"]["rerankd"]["bm25_statistics"] == {"source": "request", "documents": 6}
            np.testing.assert_allclose(first_stage(answer), bm25_scores("embedded database library", CORPUS), rtol=1e-5)
            traffic = words(250, seed=7)
            for start in range(0, 250, 50):  # plain requests teach it too, whatever their strategy
                body = {"model": "ce-fixture", "query": "q", "documents": traffic[start : start + 50], "top_n": 1}
                assert httpx.post(f"{server.url}/v2/rerank", json=body, timeout=60).status_code == 200
            answer = fused(server.url, CORPUS)
            assert answer["meta"]["rerankd"]["bm25_statistics"] == {"source": "learned", "documents": 256}
            reference = CountedStatistics.count([*CORPUS, *traffic])
            np.testing.assert_allclose(
                first_stage(answer), bm25_scores("embedded database library", CORPUS, reference), rtol=1e-5
            )
            exposition = httpx.get(f"{server.url}/metrics", timeout=10).text
            assert 'rerankd_corpus_stats_documents{model="rerankd/ce-fixture"} 256.0' in exposition
            assert 'rerankd_corpus_stats_warm{model="rerankd/ce-fixture"} 1.0' in exposition
            assert 'rerankd_corpus_stats_bytes{model="rerankd/ce-fixture"} 8.388608e+06' in exposition
    finally:
        service.close()


def test_server_uses_the_operators_file(ce_fixture_path: Path, thread_server, tmp_path: Path) -> None:
    corpus = [*CORPUS, *words(100, seed=9)]
    CountedStatistics.count(corpus).save(tmp_path / "stats.json.gz")
    settings = Settings(
        model=["ce-fixture"], warmup_seconds=0, embedding_model="", corpus_stats=tmp_path / "stats.json.gz"
    )
    service = LocalService(settings)
    service.load()
    try:
        with thread_server(create_app(settings, service)) as server:
            answer = fused(server.url, CORPUS[:4])
            assert answer["meta"]["rerankd"]["bm25_statistics"] == {"source": "file", "documents": 106}
            expected = bm25_scores("embedded database library", CORPUS[:4], CountedStatistics.count(corpus))
            np.testing.assert_allclose(first_stage(answer), expected, rtol=1e-5)
    finally:
        service.close()


@pytest.mark.slow
def test_a_bad_statistics_file_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("[1, 2]")
    done = subprocess.run(
        [sys.executable, "-m", "rerankd.cli", "serve", "--model", "ce-fixture", "--port", "0",
         "--corpus-stats", str(tmp_path / "bad.json")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 2 and "corpus_stats" in done.stderr and "bad.json" in done.stderr
