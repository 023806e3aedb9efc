"""Calibrated scores: maps and error measures by hand, fitting on known curves, a real server answering with
probabilities (and `min_score`), and `rerankd calibrate` then `rerankd eval` on a small labelled set."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ThreadServer
from sentence_transformers import CrossEncoder

from rerankd.api import create_app
from rerankd.config import Settings
from rerankd.errors import RerankdError
from rerankd.evaluation.calibrate import (
    Labelled,
    expected_calibration_error,
    fit_map,
    precision_at,
    reliability,
    threshold_for_precision,
)
from rerankd.first_stage import Bm25
from rerankd.pipeline.calibration import Calibration, ScoreMap, parse_key, variant_key
from rerankd.pipeline.service import LocalService


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


PLATT = ScoreMap("platt", "logit", slope=0.5, intercept=-1.0)
ISOTONIC = ScoreMap("isotonic", "identity", knots=((-1.0, 0.0, 1.0), (0.1, 0.2, 0.9)))


def test_maps_by_hand_and_monotone() -> None:
    # Platt on the logit of a sigmoid score: sigmoid(0.5 * logit - 1).
    np.testing.assert_allclose(PLATT(sigmoid([2.0, -4.0])), sigmoid([0.0, -3.0]))
    # Isotonic: linear between knots, clipped outside them.
    np.testing.assert_allclose(ISOTONIC(np.array([-5.0, -0.5, 0.5, 3.0])), [0.1, 0.15, 0.55, 0.9])
    grid = np.linspace(-8, 8, 1001)
    for score_map, scores in ((PLATT, sigmoid(grid)), (ISOTONIC, grid)):
        assert np.all(np.diff(score_map(scores)) >= 0)  # never reorders


def test_variant_keys() -> None:
    assert variant_key("direct", 100) == "direct"
    assert variant_key("hybrid", 30, "zscore", 0.5) == "hybrid:30+zscore:0.5"
    assert parse_key("hybrid:30+zscore:0.5") == ("hybrid", 30, "zscore", 0.5)
    assert parse_key("bi-encoder") == ("bi-encoder", None, "none", 0.0)
    for bad in ("direct:3", "hybrid+zscore:0.5", "auto"):
        with pytest.raises(ValueError, match="a variant is direct"):
            parse_key(bad)
    with pytest.raises(ValueError, match="weight must be between 0 and 1"):
        parse_key("hybrid:30+zscore:2")


def test_file_round_trip_and_selection(tmp_path: Path) -> None:
    calibration = Calibration("m", {"direct": PLATT, "hybrid": PLATT, "hybrid:30+zscore:0.5": ISOTONIC}, {"split": "x"})
    calibration.save(tmp_path / "c.json")
    loaded = Calibration.load(tmp_path / "c.json")
    assert loaded == calibration and loaded.meta == {"split": "x"}
    assert loaded.select("direct", 100, "none", 0.5, None)[1] == {
        "calibrated": True,
        "fitted_for": "direct",
        "method": "platt",
    }
    assert loaded.select("hybrid", 17, "none", 0.5, None)[1]["fitted_for"] == "hybrid"  # any K unfused
    assert loaded.select("hybrid", 30, "zscore", 0.5, "bm25")[0] == ISOTONIC
    assert loaded.select("hybrid", 20, "zscore", 0.5, "bm25")[1]["reason"].startswith("no map for hybrid:20+zscore")
    assert (
        "fused with first_stage_scores" in loaded.select("hybrid", 30, "zscore", 0.5, "first_stage_scores")[1]["reason"]
    )
    (tmp_path / "bad.json").write_text(json.dumps({"format": "rerankd-calibration/1", "model": "m", "maps": {"x": {}}}))
    with pytest.raises(RerankdError, match=r"bad\.json"):
        Calibration.load(tmp_path / "bad.json")


def test_ece_reliability_and_thresholds_by_hand() -> None:
    probabilities, relevant = np.array([0.05, 0.15, 0.95, 0.92]), np.array([0, 1, 1, 0])
    # Bins: 0.05 -> |0 - 0.05|; 0.15 -> |1 - 0.15|; 0.95 and 0.92 -> |0.5 - 0.935| twice.
    assert expected_calibration_error(probabilities, relevant) == pytest.approx((0.05 + 0.85 + 2 * 0.435) / 4)
    assert [row["count"] for row in reliability(probabilities, relevant)] == [1, 1, 2]
    assert expected_calibration_error(np.array([1.0]), np.array([1])) == 0.0  # 1.0 is in the last bin
    scores, labels = np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, 1, 0, 1, 0])
    # Precision at each threshold: 1, 1, 2/3, 3/4, 3/5.
    assert threshold_for_precision(scores, labels, 0.75) == 0.6
    assert threshold_for_precision(scores, labels, 0.8) == 0.8
    assert threshold_for_precision(scores, labels, 1.01) is None
    assert threshold_for_precision(np.array([0.5, 0.5, 0.4]), np.array([1, 0, 1]), 0.6) == 0.4  # ties go together
    assert precision_at(scores, labels, 0.6) == (0.75, 4)


def test_fit_recovers_a_known_curve() -> None:
    """Scores whose true P(relevant) is sigmoid(0.7 logit - 1): the fitted map finds it, the raw scores are far."""
    rng = np.random.default_rng(0)
    logits = {f"q{i}": rng.normal(-2.0, 2.5, size=50) for i in range(400)}
    relevant = {q: (rng.random(50) < sigmoid(0.7 * x - 1.0)).astype(float) for q, x in logits.items()}
    data = Labelled({q: sigmoid(x) for q, x in logits.items()}, relevant)
    fitted = fit_map(data, "logit", holdout=0.3, seed=0)
    grid = np.linspace(-6, 6, 25)
    np.testing.assert_allclose(fitted(sigmoid(grid)), sigmoid(0.7 * grid - 1.0), atol=0.06)
    report = fitted.report
    assert set(report["held_out"]) == {"queries", "isotonic", "platt"} and report["held_out"]["queries"] == 120
    assert min(report["held_out"]["isotonic"]["ece"], report["held_out"]["platt"]["ece"]) < 0.02
    assert report["uncalibrated_ece"] > 0.05
    # A threshold on the calibrated scores: the pairs above it are relevant 80% of the time (their mean probability
    # is about that, so the threshold itself is lower).
    threshold = report["thresholds_for_precision"]["0.8"]
    scores, labels = data.pairs(sorted(logits))
    precision, kept = precision_at(fitted(scores), labels, threshold)
    assert 0.8 <= precision < 0.85 and kept > 100 and 0.3 < threshold < 0.8


QUERY = "embedded sql database library"
DOCUMENTS = [
    "A real-time strategy game of ancient warfare.",
    "SQLite is a C library that implements an embedded SQL database engine.",
    "Tools to edit GNOME menus.",
    "PostgreSQL is an object-relational SQL database server.",
    "Berkeley DB is an embedded key-value database library.",
]


@pytest.fixture(scope="module")
def calibrated_server(ce_fixture_path: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("calibrated")
    Calibration("ce-fixture", {"direct": PLATT, "hybrid:2+zscore:0.5": ISOTONIC}).save(folder / "c.json")
    settings = Settings(
        model=["ce-fixture"], warmup_seconds=0, embedding_model="", calibration=[str(folder / "c.json")]
    )
    plain = LocalService(settings.model_copy(update={"calibration": []}))
    service = LocalService(settings)
    for s in (plain, service):
        s.load()
    try:
        with (
            ThreadServer(create_app(settings, service)) as calibrated,
            ThreadServer(create_app(settings, plain)) as raw,
        ):
            yield calibrated.url, raw.url
    finally:
        service.close()
        plain.close()


def rerank(url: str, expect: int = 200, **fields: object) -> dict:
    body = {"model": "ce-fixture", "query": QUERY, "documents": DOCUMENTS, **fields}
    response = httpx.post(f"{url}/v2/rerank", json=body, timeout=60)
    assert response.status_code == expect, response.text
    return response.json()


def test_served_scores_are_the_maps_probabilities(calibrated_server: tuple[str, str]) -> None:
    calibrated, plain = calibrated_server
    for fields, score_map in (({}, PLATT), ({"strategy": "hybrid", "candidates": 2, "fusion": "zscore"}, ISOTONIC)):
        before, after = rerank(plain, **fields), rerank(calibrated, **fields)
        assert [r["index"] for r in after["results"]] == [r["index"] for r in before["results"]]  # same order
        expected = score_map(np.array([r["relevance_score"] for r in before["results"]]))
        np.testing.assert_allclose([r["relevance_score"] for r in after["results"]], expected, rtol=1e-6)
        assert after["meta"]["rerankd"]["calibration"]["calibrated"] is True
    # TEI's raw_scores asks for logits: not calibrated (the header and TEI's list answer carry no meta, so the
    # scores say it: they are the plain server's logits).
    tei = {"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}
    raw = [httpx.post(f"{url}/rerank", json=tei, timeout=60).json() for url in (calibrated, plain)]
    mapped = [httpx.post(f"{url}/rerank", json={**tei, "raw_scores": False}).json() for url in (calibrated, plain)]
    assert raw[0] == raw[1] and mapped[0] != mapped[1]
    meta = rerank(calibrated, strategy="hybrid", candidates=3)["meta"]["rerankd"]["calibration"]
    assert meta["calibrated"] is False and meta["reason"].startswith("no map for hybrid:3")
    client = rerank(calibrated, strategy="hybrid", candidates=2, fusion="zscore", first_stage_scores=[1, 2, 3, 4, 5])
    assert "fused with first_stage_scores" in client["meta"]["rerankd"]["calibration"]["reason"]
    assert "calibration" not in rerank(plain)["meta"]["rerankd"]  # no file, nothing said


def test_min_score_drops_documents_below_it(calibrated_server: tuple[str, str]) -> None:
    calibrated, _ = calibrated_server
    everything = [r["relevance_score"] for r in rerank(calibrated)["results"]]
    cut = float(np.median(everything))
    kept = rerank(calibrated, min_score=cut)
    assert [r["relevance_score"] for r in kept["results"]] == [s for s in everything if s >= cut]
    assert kept["meta"]["rerankd"]["min_score"] == {"value": cut, "dropped": sum(s < cut for s in everything)}
    assert len(rerank(calibrated, min_score=cut, top_n=1)["results"]) == 1
    assert rerank(calibrated, min_score=2.0)["results"] == []
    for body in ('"min_score": NaN', '"min_score": Infinity'):
        response = httpx.post(
            f"{calibrated}/v2/rerank",
            content=f'{{"model": "ce-fixture", "query": "q", "documents": ["a"], {body}}}',
            headers={"content-type": "application/json"},
            timeout=30,
        )
        assert response.status_code in (400, 422) and "min_score" in response.text, response.text
    response = httpx.post(
        f"{calibrated}/v2/rerank", json={"model": "ce-fixture", "query": "q", "documents": ["a"], "min_score": "high"}
    )
    assert response.status_code == 422 and "min_score" in response.text


@pytest.mark.slow
def test_a_file_for_a_model_not_served_stops_the_start(tmp_path: Path) -> None:
    Calibration("someone/else", {"direct": PLATT}).save(tmp_path / "c.json")
    done = subprocess.run(
        [sys.executable, "-m", "rerankd.cli", "serve", "--model", "ce-fixture", "--port", "0", "--warmup-seconds", "0",
         "--embedding-model", "", "--calibration", str(tmp_path / "c.json")],
        capture_output=True, text=True, timeout=180, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode != 0 and "calibration" in done.stderr and "someone/else" in done.stderr, done.stderr[-2000:]


def write_labelled(folder: Path, queries: int = 24) -> dict[str, dict]:
    """A corpus where each query has one relevant document and a few that share one of its words."""
    topics = [f"topic{i}" for i in range(queries)]
    corpus = {}
    for i, topic in enumerate(topics):
        corpus[f"r{i}"] = f"{topic} alpha{i} manual with beta{i} notes"
        corpus[f"n{i}"] = f"{topic} gamma{i} unrelated text"
        corpus[f"m{i}"] = f"alpha{i} delta{i} other words"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in corpus.items()))
    split = {"train": range(0, queries, 2), "dev": range(1, queries, 2)}
    for name, ids in split.items():
        rows = [{"_id": f"q{i}", "text": f"{topics[i]} alpha{i} beta{i}"} for i in ids]
        (folder / f"queries-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "qrels" / f"{name}.tsv").write_text("".join(f"q{i}\tr{i}\t1\n" for i in ids))
    return {"corpus": corpus, "split": split, "topics": topics}


@pytest.mark.slow
@pytest.mark.timeout(1200)  # two commands, each loading the model (minutes on a busy 2-core machine)
def test_calibrate_then_eval_measures_calibration(ce_fixture_path: Path, tmp_path: Path) -> None:
    data = write_labelled(tmp_path / "set")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    common = ["--model", "ce-fixture", "--backend", "torch", "--warmup-seconds", "0", "--embedding-model", ""]
    done = subprocess.run(
        [sys.executable, "-m", "rerankd.cli", "calibrate", str(tmp_path / "set"), "--split", "train",
         "--output", str(tmp_path / "c.json"), "--depth", "3", "--strategy", "direct", "--strategy",
         "hybrid:2+zscore:0.5", "--no-progress", *common],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    calibration = Calibration.load(tmp_path / "c.json")
    assert set(calibration.maps) == {"direct", "hybrid:2+zscore:0.5"}
    assert calibration.meta["split"] == "train" and calibration.maps["direct"].report["pairs"] == 12 * 3
    done = subprocess.run(
        [sys.executable, "-m", "rerankd.cli", "eval", str(tmp_path / "set"), "--depth", "3", "--hybrid-k", "2",
         "--fit-fraction", "0", "--timed-queries", "1", "--out", str(tmp_path / "out"), "--no-progress",
         "--calibration", str(tmp_path / "c.json"), *common],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "eval-set.json").read_text())
    rows = {row["strategy"]: row for row in record["depths"][0]["rows"]}
    # By hand: sentence-transformers' sigmoid scores of BM25's top 3 per dev query, their ECE raw and mapped.
    model = CrossEncoder(str(ce_fixture_path), device="cpu")
    corpus_ids = list(data["corpus"])
    index = Bm25([data["corpus"][d] for d in corpus_ids])
    probabilities, relevant = [], []
    for i in data["split"]["dev"]:
        query = f"{data['topics'][i]} alpha{i} beta{i}"
        top = [corpus_ids[p] for p in index.top([query], 3)[0][0]]
        probabilities += list(model.predict([(query, data["corpus"][d]) for d in top]))
        relevant += [d == f"r{i}" for d in top]
    probabilities, labels = np.array(probabilities, dtype=np.float64), np.array(relevant, dtype=np.float64)
    assert rows["direct"]["ece"] == pytest.approx(expected_calibration_error(probabilities, labels), abs=1e-5)
    mapped = calibration.maps["direct"](probabilities)
    assert rows["direct calibrated"]["ece"] == pytest.approx(expected_calibration_error(mapped, labels), abs=1e-5)
    assert rows["direct calibrated"]["ndcg@10"] == pytest.approx(rows["direct"]["ndcg@10"])  # order unchanged
    threshold = calibration.maps["direct"].report["thresholds_for_precision"]["0.5"]
    if threshold is not None:
        _, kept = precision_at(mapped, labels, threshold)
        assert rows["direct calibrated"]["threshold_precision"]["0.5"]["kept"] == kept
    assert rows["hybrid:2+zscore:0.5 calibrated"]["ece"] is not None
    assert rows["fusion zscore w=0.5"]["ece"] is None  # fused scores are not probabilities
    assert (tmp_path / "out" / "eval-set-reliability.png").stat().st_size > 10_000
    assert math.isfinite(rows["direct calibrated"]["ece"])
