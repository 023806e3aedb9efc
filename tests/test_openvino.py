"""The OpenVINO backend against the sentence-transformers reference: fp32 within 1e-4 of the logits, bf16 (CPUs
with bf16 arithmetic) and calibrated static int8 keep real models' rankings; int8-rescore on it serves scores that
agree with their order. Also: what `auto` picks for each CPU class from the measured table, and the refusals."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DOCUMENTS, QUERY, TRAINED_CE
from test_backends import debian_candidates, ranking_agreement, reference, score_many, scores

from rerankd.backends.fidelity import FIDELITY, SPEED_ORDER, cpu_class
from rerankd.backends.openvino import INT8_RECIPE, int8_folder
from rerankd.backends.select import choose
from rerankd.config import Settings
from rerankd.cpu import Cpu, this_cpu
from rerankd.models import resolve_model
from rerankd.pipeline.service import LocalService
from rerankd.pipeline.types import RerankRequest

__all__ = ["debian_candidates"]  # a fixture, used by name

BF16 = pytest.mark.skipif(not this_cpu().bf16, reason="needs a CPU with bf16 arithmetic (avx512_bf16 or amx_bf16)")
AVX2 = frozenset({"avx2", "fma"})
VNNI = frozenset({"avx2", "avx512_vnni"})
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})


def openvino(precision: str, **extra: object) -> Settings:
    return Settings(backend="openvino", precision=precision, device="cpu", **extra)


@pytest.mark.parametrize("model", ["ce-fixture", "default"])
def test_fp32_matches_sentence_transformers(model: str) -> None:
    spec = resolve_model(model)
    ours = scores(spec, openvino("fp32"), QUERY, DOCUMENTS)
    np.testing.assert_allclose(ours, reference(spec, QUERY, DOCUMENTS), atol=1e-4)


@pytest.mark.parametrize("model", ["ce-fixture", "default"])
def test_batches_padded_to_a_shape_multiple_score_as_unpadded(model: str) -> None:
    """OpenVINO's batches are padded to a multiple of 16 tokens (masked), never past the model's length: the same
    scores as at the longest input's own width."""
    from rerankd.engine.engine import Engine

    spec = resolve_model(model)
    engine = Engine.load(spec, openvino("fp32", warmup_seconds=0))
    try:
        items = engine.prepare_sync(QUERY, [*DOCUMENTS, "word " * 2000]).inputs  # one at the model's full length
        assert engine.backend.width_multiple == 16
        tight, padded = engine.tokenizer.collate(items[:3]), engine.tokenizer.collate(items[:3], 16)
        assert padded.input_ids.shape[1] % 16 == 0 and padded.input_ids.shape[1] >= tight.input_ids.shape[1]
        assert engine.tokenizer.collate(items, 16).input_ids.shape[1] == spec.max_length == len(items[-1])
        np.testing.assert_allclose(engine.backend.forward(padded), engine.backend.forward(tight), atol=1e-5)
    finally:
        engine.close()


@pytest.mark.slow  # calibrates or compiles models: out of the edit loop (make test-fast)
@pytest.mark.parametrize("model", [str(TRAINED_CE), "default"])
@pytest.mark.parametrize("precision", [pytest.param("bf16", marks=BF16), "int8"])
def test_bf16_and_static_int8_keep_the_rankings_of_real_models(
    model: str, precision: str, debian_candidates: list[tuple[str, list[str]]]
) -> None:
    """Looser than the benchmark's bar (bench/int8_fidelity.py, 100 queries): 6 queries vary more."""
    if model == str(TRAINED_CE) and not TRAINED_CE.is_dir():
        pytest.skip(f"the trained cross-encoder is not at {TRAINED_CE} (../shared)")
    spec = resolve_model(model)
    exact = score_many(spec, Settings(backend="onnx", precision="fp32", device="cpu"), debian_candidates)
    fast = score_many(spec, openvino(precision), debian_candidates)
    spearman, overlap = np.mean([ranking_agreement(a, b, k=5) for a, b in zip(exact, fast, strict=True)], axis=0)
    print(f"{spec.short_name} openvino {precision} vs onnx fp32: Spearman {spearman:.4f}, top-5 overlap {overlap:.3f}")
    assert spearman >= (0.99 if precision == "bf16" else 0.95)
    assert overlap >= 0.8


@pytest.mark.slow  # calibrates or compiles models: out of the edit loop (make test-fast)
def test_int8_is_calibrated_once_and_cached_by_recipe(tmp_path: Path) -> None:
    spec = resolve_model("ce-fixture")
    first = scores(spec, openvino("int8", cache_dir=tmp_path), QUERY, DOCUMENTS)
    folder = int8_folder(spec, tmp_path)
    facts = json.loads((folder / "export.json").read_text())
    assert INT8_RECIPE in folder.name and facts["recipe"] == INT8_RECIPE and facts["calibration_seconds"] > 0
    built = (folder / "model.xml").stat().st_mtime_ns
    again = scores(spec, openvino("int8", cache_dir=tmp_path), QUERY, DOCUMENTS)
    assert (folder / "model.xml").stat().st_mtime_ns == built  # reused, not calibrated again
    np.testing.assert_allclose(again, first, atol=1e-6)


@BF16
@pytest.mark.slow  # calibrates or compiles models: out of the edit loop (make test-fast)
def test_fp32_then_bf16_from_one_compiled_cache_in_one_process(tmp_path: Path) -> None:
    """OpenVINO's compiled-model cache key leaves the precision hint out: one cache for both crashed the process
    (a bf16 model loaded from fp32's blob). In a subprocess, so a regression fails this test, not the run."""
    script = f"""
import numpy as np
from test_backends import scores
from conftest import DOCUMENTS, QUERY
from rerankd.config import Settings
from rerankd.models import resolve_model
spec = resolve_model("ce-fixture")
fp32, bf16 = (scores(spec, Settings(backend="openvino", precision=p, device="cpu", cache_dir={str(tmp_path)!r}),
                     QUERY, DOCUMENTS) for p in ("fp32", "bf16"))
assert 0 < np.abs(fp32 - bf16).max() < 0.1, np.abs(fp32 - bf16).max()
print("both ran")
"""
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent)])}  # conftest, testing/
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tests,
        env=env,
        capture_output=True,
        timeout=600,
        encoding="utf-8",
        errors="replace",  # progress bars in the child's output, whatever the locale
    )
    assert done.returncode == 0 and "both ran" in done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize("head", [pytest.param("bf16", marks=BF16), "fp32"])
def test_int8_rescore_on_openvino_serves_scores_in_their_order(head: str) -> None:
    names = ["sqlite", "lmdb", "duckdb", "berkeley", "tinydb", "leveldb", "rocksdb", "h2", "derby", "hsqldb"]
    documents = [f"{name}: an embedded {kind} database library for C code" for name in names for kind in ("SQL", "KV")]
    settings = openvino("int8-rescore", rescore_head_precision=head, model=["ce-fixture"], embedding_model="")
    service = LocalService(settings.model_copy(update={"rescore_head_min": 6, "warmup_seconds": 0}))
    service.load()
    try:
        answer = asyncio.run(service.rerank(RerankRequest(QUERY, documents)))
        exact = scores(resolve_model("ce-fixture"), openvino(head), QUERY, documents)
    finally:
        service.close()
    served = [item.score for item in answer.results]
    assert len(served) == len(documents) and np.all(np.diff(served) < 0)
    rescored = answer.meta["rerankd"]["rescored"]
    assert (rescored["documents"], rescored["precision"]) == (6, head)
    head_indices = [item.index for item in answer.results[:6]]
    expected = 1 / (1 + np.exp(-exact[head_indices]))
    np.testing.assert_allclose(served[:6], expected, atol=1e-5)  # the head is the head engine's own scores


# -- what auto picks, on any CPU ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [AVX2, VNNI, SAPPHIRE_RAPIDS])
@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder", "late-interaction"])
def test_auto_picks_the_fastest_engine_measured_faithful_for_the_cpu_class(flags: frozenset[str], kind: str) -> None:
    choice = choose(Settings(device="cpu"), flags, kind=kind)
    group = cpu_class(Cpu("given", flags))
    faithful = [
        engine for engine in SPEED_ORDER[group] if FIDELITY[kind].get(engine) and FIDELITY[kind][engine].faithful
    ]
    usable = [engine for engine in faithful if not engine.needs_bf16 or Cpu("given", flags).bf16]
    expected = usable[0]
    assert (choice.backend, choice.precision, choice.head_precision) == (
        expected.backend,
        expected.precision,
        expected.head,
    )
    assert choice.reason.startswith("auto") and "backends/fidelity.py" in choice.reason


def test_every_engine_auto_may_pick_was_measured_faithful() -> None:
    for kind, measured in FIDELITY.items():
        for engine, fidelity in measured.items():
            assert 0 <= fidelity.top10_overlap <= 1, (kind, engine)
    for flags in (AVX2, VNNI, SAPPHIRE_RAPIDS):
        for kind in FIDELITY:
            choice = choose(Settings(device="cpu"), flags, kind=kind)
            picked = next(
                engine
                for engine, fidelity in FIDELITY[kind].items()
                if (engine.backend, engine.precision, engine.head)
                == (choice.backend, choice.precision, choice.head_precision)
            )
            assert FIDELITY[kind][picked].faithful


@pytest.mark.parametrize(
    ("overrides", "flags", "kind", "message"),
    [
        ({"precision": "bf16"}, AVX2, "cross-encoder", "bf16 needs a CPU with bf16 arithmetic"),
        (
            {"backend": "openvino", "precision": "int8-rescore", "rescore_head_precision": "bf16"},
            VNNI,
            "cross-encoder",
            "bf16 needs a CPU with bf16 arithmetic",
        ),
        (
            {"backend": "onnx", "precision": "int8-rescore", "rescore_head_precision": "bf16"},
            SAPPHIRE_RAPIDS,
            "cross-encoder",
            "bf16 needs --backend openvino",
        ),
        ({"backend": "openvino"}, SAPPHIRE_RAPIDS, "causal-lm", "openvino serves encoders"),
        ({"backend": "torch", "precision": "int8"}, VNNI, "cross-encoder", "int8 needs --backend onnx or openvino"),
        ({"backend": "onnx", "precision": "bf16"}, SAPPHIRE_RAPIDS, "cross-encoder", "the onnx backend runs"),
    ],
)
def test_impossible_or_emulated_engines_are_refused_with_the_reason(
    overrides: dict, flags: frozenset[str], kind: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        choose(Settings(device="cpu", **overrides), flags, kind=kind)


def test_bf16_for_an_llm_reranker_is_torch_and_refused_without_bf16() -> None:
    assert choose(Settings(device="cpu", precision="bf16"), SAPPHIRE_RAPIDS, kind="causal-lm").backend == "torch"
    with pytest.raises(ValueError, match="bf16 needs a CPU with bf16 arithmetic"):
        choose(Settings(device="cpu", precision="bf16"), AVX2, kind="causal-lm")
