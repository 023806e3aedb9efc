"""`rerankd eval` on a tiny hand-made BEIR folder: its metrics equal values computed by hand."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sentence_transformers import CrossEncoder
from sentence_transformers.multi_vector_encoder import MultiVectorEncoder

from testing.colbert_fixtures import build_pylate_colbert

pytestmark = pytest.mark.slow  # every test reads one `rerankd eval` run in a subprocess (minutes on 2 cores)

CORPUS = {
    "d1": "solar panel battery charger for camping",
    "d2": "solar panel mounting kit",
    "d3": "solar powered garden lights",
    "d4": "battery pack for phones",
    "d5": "tea kettle with a whistle and a long wooden handle",
    "d6": "green tea leaves from japan",
    "d7": "cast iron kettle",
    "d8": "electric kettle for tea",
}
QUERIES = {"q1": "solar panel battery", "q2": "tea kettle"}
QRELS = {"q1": {"d2": 1}, "q2": {"d8": 2, "d7": 1}}
# BM25's top 4, worked out for these texts: q1 puts its relevant d2 second; q2 puts d8 first and d7 third.
BM25_TOP4 = {"q1": ["d1", "d2", "d4", "d3"], "q2": ["d8", "d5", "d7", "d6"]}


def write_beir(folder: Path) -> None:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in CORPUS.items()))
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in QUERIES.items()))
    rows = [f"{q}\t{d}\t{r}" for q, docs in QRELS.items() for d, r in docs.items()]
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")


def ndcg10(ranking: list[str], relevant: dict[str, int]) -> float:
    """Linear gains (trec_eval's and BEIR's convention)."""
    dcg = sum(relevant.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranking[:10]))
    ideal = sum(r / math.log2(i + 2) for i, r in enumerate(sorted(relevant.values(), reverse=True)[:10]))
    return dcg / ideal


def mrr10(ranking: list[str], relevant: dict[str, int]) -> float:
    return next((1 / (i + 1) for i, doc in enumerate(ranking[:10]) if doc in relevant), 0.0)


@pytest.fixture(scope="module")
def colbert() -> Path:
    return build_pylate_colbert()


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory, colbert: Path) -> dict:
    root = tmp_path_factory.mktemp("eval")
    write_beir(root / "tiny")
    command = [
        sys.executable, "-m", "rerankd.cli", "eval", str(root / "tiny"), "--model", "ce-fixture",
        "--backend", "torch", "--depth", "4", "--hybrid-k", "2", "--fit-fraction", "0", "--timed-queries", "1",
        "--warmup-seconds", "0", "--out", str(root / "out"), "--no-progress", "--first-stage-model", str(colbert),
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((root / "out" / "eval-tiny.json").read_text())
    return {"stdout": done.stdout, "record": record, "png": root / "out" / "eval-tiny.png"}


def rows(evaluation: dict) -> dict[str, dict]:
    return {row["strategy"]: row for row in evaluation["record"]["depths"][0]["rows"]}


def test_timings_are_of_real_scoring(evaluation: dict) -> None:
    # The timed sample replays queries the accuracy pass scored: a score cache would answer them for free.
    assert evaluation["record"]["score_cache"] is False


def test_first_stage_metrics_by_hand(evaluation: dict) -> None:
    bm25 = rows(evaluation)["bm25 (first stage)"]
    # q1: relevant at rank 2 -> 1/log2(3); q2: gains 2 at rank 1 and 1 at rank 3 -> (2 + 1/2) / (2 + 1/log2(3)).
    assert bm25["ndcg@10"] == pytest.approx((1 / math.log2(3) + 2.5 / (2 + 1 / math.log2(3))) / 2, abs=1e-9)
    assert bm25["mrr@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert bm25["recall@10"] == pytest.approx(1.0)


def test_model_and_hybrid_metrics_by_hand(evaluation: dict, ce_fixture_path: Path) -> None:
    model = CrossEncoder(str(ce_fixture_path), device="cpu")
    direct, hybrid = [], []
    for qid, candidates in BM25_TOP4.items():
        scores = dict(zip(candidates, model.predict([(QUERIES[qid], CORPUS[d]) for d in candidates]), strict=True))
        direct.append(sorted(candidates, key=lambda d: -scores[d]))
        hybrid.append(sorted(candidates[:2], key=lambda d: -scores[d]) + candidates[2:])  # K=2, the rest as BM25
    table = rows(evaluation)
    for name, rankings in (("direct", direct), ("hybrid K=2", hybrid)):
        assert table[name]["ndcg@10"] == pytest.approx(
            sum(ndcg10(r, QRELS[q]) for r, q in zip(rankings, QRELS, strict=True)) / 2, abs=1e-6
        ), name
        assert table[name]["mrr@10"] == pytest.approx(
            sum(mrr10(r, QRELS[q]) for r, q in zip(rankings, QRELS, strict=True)) / 2, abs=1e-6
        ), name


def test_a_first_stage_model_alone_and_as_a_cascade_by_hand(
    evaluation: dict, ce_fixture_path: Path, colbert: Path
) -> None:
    """`--first-stage-model`: the ColBERT alone, and picking K=2 of BM25's 4 for the cross-encoder (the rest in the
    ColBERT's order), as the reference implementations score them."""
    model = CrossEncoder(str(ce_fixture_path), device="cpu")
    first = MultiVectorEncoder(str(colbert), device="cpu")
    alone, cascade = [], []
    for qid, candidates in BM25_TOP4.items():
        texts = [CORPUS[d] for d in candidates]
        maxsim = first.similarity(first.encode_query([QUERIES[qid]]), first.encode_document(texts))[0].tolist()
        by_colbert = [d for _, d in sorted(zip(maxsim, candidates, strict=True), key=lambda pair: -pair[0])]
        top = by_colbert[:2]
        scores = dict(zip(top, model.predict([(QUERIES[qid], CORPUS[d]) for d in top]), strict=True))
        alone.append(by_colbert)
        cascade.append(sorted(top, key=lambda d: -scores[d]) + by_colbert[2:])
    table = rows(evaluation)
    name = colbert.name
    for row, rankings in ((f"{name} only", alone), (f"cascade {name} K=2", cascade)):
        assert table[row]["ndcg@10"] == pytest.approx(
            sum(ndcg10(r, QRELS[q]) for r, q in zip(rankings, QRELS, strict=True)) / 2, abs=1e-6
        ), row
        assert table[row]["p50_ms"] > 0, row


def test_every_strategy_is_reported_timed_and_plotted(evaluation: dict) -> None:
    table = rows(evaluation)
    assert {"bi-encoder only", "direct", "hybrid K=2", "fusion zscore w=0.5", "bi-encoder K=2 (warm cache)"} <= set(
        table
    )
    assert all(row["p50_ms"] > 0 for row in table.values())
    assert "bm25 (first stage)" in evaluation["stdout"] and "ndcg@10" in evaluation["stdout"]
    assert evaluation["png"].stat().st_size > 10_000
