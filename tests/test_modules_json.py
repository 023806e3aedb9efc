"""Nothing in a sentence-transformers folder is silently dropped: each module of `modules.json` (and its
`similarity_fn_name`) is served exactly, or the model is refused at start-up naming it.

The served case is golden-tested over HTTP: all-MiniLM-L6-v2 with a seeded Dense projection (tanh, bias) between
Pooling and Normalize, saved by sentence-transformers itself, equals `SentenceTransformer.encode` cosines on the
torch and ONNX engines. The refusals are folders changed one setting at a time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import DOCUMENTS, QUERY, ThreadServer, serve_once, wait_until
from sentence_transformers import SentenceTransformer

from rerankd.api import create_app
from rerankd.config import Settings
from rerankd.models import resolve_model
from rerankd.models.sentence_modules import UnsupportedModule
from testing.colbert_fixtures import build_dense_bi_encoder

TOLERANCE = 1e-5  # cosines; observed <= 8e-8 on both engines


@pytest.fixture(scope="module")
def dense_model() -> Path:
    return build_dense_bi_encoder()


@pytest.fixture(scope="module")
def reference(dense_model: Path) -> np.ndarray:
    model = SentenceTransformer(str(dense_model), device="cpu")
    embeddings = model.encode([QUERY, *DOCUMENTS], convert_to_tensor=True)
    return torch.nn.functional.cosine_similarity(embeddings[1:], embeddings[:1]).numpy()


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_dense_projection_is_served_with_it(dense_model: Path, reference: np.ndarray, backend: str) -> None:
    settings = Settings(
        model=[str(dense_model)], backend=backend, precision="fp32", device="cpu", warmup_seconds=0, embedding_model=""
    )
    with ThreadServer(create_app(settings)) as server:
        wait_until(lambda: httpx.get(f"{server.url}/ready", timeout=5).status_code == 200, timeout=300, interval=0.2)
        body = {"query": QUERY, "documents": DOCUMENTS, "strategy": "direct"}
        answer = httpx.post(f"{server.url}/v2/rerank", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    scores = np.full(len(DOCUMENTS), np.nan)
    for item in answer.json()["results"]:
        scores[item["index"]] = item["relevance_score"]
    assert np.abs(scores - reference).max() <= TOLERANCE
    # Without the projection the cosines differ: the test would see a dropped module.
    plain = SentenceTransformer(str(dense_model), device="cpu")
    plain = SentenceTransformer(modules=[plain[0], plain[1], plain[3]], device="cpu")
    unprojected = plain.encode([QUERY, *DOCUMENTS], convert_to_tensor=True)
    dropped = torch.nn.functional.cosine_similarity(unprojected[1:], unprojected[:1]).numpy()
    assert np.abs(dropped - reference).max() > 100 * TOLERANCE


def test_the_dense_module_is_read_in_its_place(dense_model: Path) -> None:
    spec = resolve_model(str(dense_model))
    assert spec.kind == "bi-encoder"
    assert spec.modules is not None
    assert [type(step).__name__ for step in spec.modules.steps] == ["Pool", "DenseLayer", "Norm"]
    (dense,) = spec.modules.dense
    assert (dense.in_features, dense.out_features, dense.bias, dense.activation, dense.level) == (
        384, 256, True, "tanh", "sentence",
    )  # fmt: skip


def _copy(dense_model: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(dense_model, folder)
    return folder


def _edit(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def _modules(folder: Path) -> list[dict]:
    return json.loads((folder / "modules.json").read_text())


REFUSALS = {
    "an unknown module type": (
        lambda f: (f / "modules.json").write_text(
            json.dumps([*_modules(f), {"idx": 4, "name": "4", "path": "", "type": "my_lib.modules.Rotate"}])
        ),
        "my_lib.modules.Rotate",
    ),
    "a pooling mode not served": (
        lambda f: _edit(f / "1_Pooling" / "config.json", pooling_mode="lasttoken"),
        "pooling lasttoken",
    ),
    "two pooling modes": (
        lambda f: _edit(f / "1_Pooling" / "config.json", pooling_mode=["mean", "max"]),
        "pooling mean + max",
    ),
    "an activation not served": (
        lambda f: _edit(f / "2_Dense" / "config.json", activation_function="torch.nn.modules.activation.GELU"),
        "torch.nn.modules.activation.GELU",
    ),
    "a similarity not served": (
        lambda f: _edit(f / "config_sentence_transformers.json", similarity_fn_name="euclidean"),
        "similarity_fn_name 'euclidean'",
    ),
    "a truncate_dim": (
        lambda f: _edit(f / "config_sentence_transformers.json", truncate_dim=64),
        "truncate_dim=64",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_what_cannot_be_served_exactly_is_refused_by_name(dense_model: Path, tmp_path: Path, case: str) -> None:
    change, named = REFUSALS[case]
    folder = _copy(dense_model, tmp_path)
    change(folder)
    with pytest.raises(UnsupportedModule) as caught:
        resolve_model(str(folder))
    assert named in str(caught.value)


@pytest.mark.parametrize(
    "config",
    [{"pooling_mode": "cls"}, {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}],
    ids=["sentence-transformers-6", "legacy-flags"],
)
def test_both_pooling_config_formats_are_read(dense_model: Path, tmp_path: Path, config: dict) -> None:
    folder = _copy(dense_model, tmp_path)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 384, **config}))
    assert resolve_model(str(folder)).pooling == "cls"


def test_dot_similarity_is_served_as_dot_products(dense_model: Path, tmp_path: Path) -> None:
    folder = _copy(dense_model, tmp_path)
    _edit(folder / "config_sentence_transformers.json", similarity_fn_name="dot")
    assert resolve_model(str(folder)).similarity == "dot"


@pytest.mark.slow  # a `rerankd serve` subprocess
def test_serve_refuses_an_unknown_module_at_start_up(dense_model: Path, tmp_path: Path) -> None:
    folder = _copy(dense_model, tmp_path)
    REFUSALS["an unknown module type"][0](folder)
    result = serve_once(["--model", str(folder)], tmp_path)
    assert result.returncode == 2
    assert "my_lib.modules.Rotate" in result.stderr
