"""The request runner's outcomes are the ones recorded before it was split into steps (pipeline/run/).

A fixed set of requests over every path a request can take (direct, hybrid on BM25 and on the client's scores,
fusion by z-score and RRF, a cascade, chunking, raw scores, min_score, int8-rescore with and without an int8 pass),
served in process by the ce-fixture (and the tiny LLM fixture for the cascade), answered as `runner_outcomes.json`
records: the same documents in the same order, the same scores (to float tolerance) and the same meta, less the
timings. Run this file as a script to record again, only when a change of outcome is intended.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_strategies_api import DOCUMENTS as STRATEGY_DOCUMENTS
from test_strategies_api import QUERY

from rerankd.config import Settings
from rerankd.pipeline.service import LocalService
from rerankd.pipeline.types import RerankRequest, RerankResult

RECORD = Path(__file__).with_name("runner_outcomes.json")
DOCUMENTS = [
    *STRATEGY_DOCUMENTS,  # the strategy API tests' eight, then two long ones
    "LMDB is a small embedded database library with a key-value store. " * 80,  # long: chunked when chunking
    "A database of recipes, and a library to read it. " + "The text goes on about cooking. " * 150,
]
FIRST_STAGE = [0.1, 2.0, 0.0, 1.5, 0.2, 1.8, 0.9, 0.0, 1.2, 0.7]
TIMINGS = ("elapsed_ms", "estimate_ms")  # they follow the machine, not the code
# Where int8 picks the order, it may differ on another CPU (its kernels differ): those cases compare the meta only.
INT8_ORDER = {"int8-rescore head", "int8-rescore fused"}

# (case name, service, request fields)
CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("direct", "fp32", {"strategy": "direct"}),
    ("direct top_n", "fp32", {"strategy": "direct", "top_n": 3}),
    ("hybrid bm25", "fp32", {"strategy": "hybrid", "candidates": 4}),
    ("hybrid client scores", "fp32", {"strategy": "hybrid", "candidates": 5, "first_stage_scores": FIRST_STAGE}),
    ("fusion zscore", "fp32", {"strategy": "hybrid", "candidates": 6, "fusion": "zscore", "fusion_weight": 0.3}),
    ("fusion rrf client", "fp32", {"fusion": "rrf", "first_stage_scores": FIRST_STAGE}),
    ("chunked", "fp32", {"strategy": "direct", "chunking": True, "max_chunks_per_doc": 3}),
    ("chunked hybrid", "fp32", {"strategy": "hybrid", "candidates": 5, "max_chunks_per_doc": 2}),
    ("raw scores", "fp32", {"strategy": "hybrid", "candidates": 4, "raw_scores": True}),
    ("min_score", "fp32", {"min_score": 0.511}),
    ("int8-rescore head", "int8-rescore", {"strategy": "direct"}),  # a head of 4 of 10: an int8 pass first
    ("int8-rescore alone", "int8-rescore", {"strategy": "hybrid", "candidates": 4, "top_n": 2}),  # the head engine
    ("int8-rescore fused", "int8-rescore", {"fusion": "zscore", "top_n": 2}),  # fusion keeps int8 only
    ("cascade", "cascade", {"strategy": "hybrid", "candidates": 4, "first_stage_model": "ce-fixture"}),
    ("cascade fused", "cascade", {"strategy": "hybrid", "candidates": 4, "first_stage_model": "ce-fixture",
                                  "fusion": "zscore"}),
]  # fmt: skip


@contextlib.contextmanager
def service(kind: str) -> Iterator[tuple[LocalService, str]]:
    """A loaded service of `kind`, and the model its requests ask for."""
    common: dict[str, Any] = {"embedding_model": "", "warmup_seconds": 0, "device": "cpu", "score_cache_mb": 0}
    model = "ce-fixture"
    if kind == "fp32":
        settings = Settings(model=[model], backend="onnx", precision="fp32", **common)
    elif kind == "int8-rescore":
        settings = Settings(model=[model], backend="onnx", precision="int8-rescore", rescore_head_min=4, **common)
    else:
        from test_golden_llm import build_tiny_llm

        model = str(build_tiny_llm("qwen3"))
        settings = Settings(model=[model, "ce-fixture"], backend="torch", precision="fp32", **common)
    served = LocalService(settings)
    served.load()
    try:
        yield served, model
    finally:
        served.close()


def answer(result: RerankResult) -> dict[str, Any]:
    """What a recorded outcome holds: every result's fields and the meta, less the timings."""
    meta = {key: value for key, value in result.meta["rerankd"].items() if key not in TIMINGS}
    results = [
        [item.index, item.score, item.model_score, item.first_stage_score, item.cut_by_prefilter]
        for item in result.results
    ]
    return {"results": results, "tokens": result.tokens, "meta": meta}


def outcomes(kinds: set[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for kind in sorted(kinds):
        with service(kind) as (served, model):
            for name, case_kind, fields in CASES:
                if case_kind == kind:
                    request = RerankRequest(QUERY, DOCUMENTS, model=model, **fields)
                    found[name] = answer(asyncio.run(served.rerank(request)))
    return found


def _same(recorded: Any, now: Any, where: str) -> None:
    if isinstance(recorded, float) and isinstance(now, float):
        assert math.isclose(recorded, now, rel_tol=1e-4, abs_tol=1e-5), f"{where}: {now} != {recorded}"
    elif isinstance(recorded, dict) and isinstance(now, dict):
        assert list(recorded) == list(now), f"{where}: keys {list(now)} != {list(recorded)}"
        for key in recorded:
            _same(recorded[key], now[key], f"{where}.{key}")
    elif isinstance(recorded, list) and isinstance(now, list):
        assert len(recorded) == len(now), f"{where}: {len(now)} items != {len(recorded)}"
        for i, (a, b) in enumerate(zip(recorded, now, strict=True)):
            _same(a, b, f"{where}[{i}]")
    else:
        assert recorded == now, f"{where}: {now!r} != {recorded!r}"


@pytest.mark.parametrize("kind", ["fp32", "int8-rescore", "cascade"])
def test_outcomes_are_the_recorded_ones(kind: str) -> None:
    recorded = json.loads(RECORD.read_text(encoding="utf-8"))
    now = outcomes({kind})
    assert now, kind
    for name, outcome in now.items():
        # A JSON round trip: what was recorded went through one too.
        outcome = json.loads(json.dumps(outcome))
        if name in INT8_ORDER:
            outcome, recorded[name] = outcome["meta"], recorded[name]["meta"]
            outcome.get("rescored", {}).pop("tokens", None)  # the head's tokens follow which documents are in it
            recorded[name].get("rescored", {}).pop("tokens", None)
        _same(recorded[name], outcome, name)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))  # test_golden_llm, for the cascade's LLM
    every = outcomes({kind for _, kind, _ in CASES})
    RECORD.write_text(json.dumps(every, indent=1) + "\n", encoding="utf-8")
    print(f"recorded {len(every)} outcomes in {RECORD}")
