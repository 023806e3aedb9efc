"""Late-interaction (ColBERT) models: scores equal sentence-transformers' MultiVectorEncoder (which equals PyLate's
`rank.rerank`) over HTTP, in every dialect, on the torch and ONNX engines, for both layouts users bring.

Fixtures, built offline (testing/colbert_fixtures.py): a ColBERT saved as PyLate 1.6 saves it (the all-MiniLM-L6-v2
body, `[Q] `/`[D] ` markers, a seeded 384 -> 128 projection), a Stanford ColBERT checkpoint (`HF_ColBERT`, the
projection as `linear.weight`, artifact.metadata; queries attend to their expansion) and a tiny ModernBERT ColBERT.
Tolerance 1e-5 on MaxSim scores of 5-30 (observed <= 7e-6); the vector cache is fp32 there so that repeated
requests, answered from it, are held to the same bound. The fp16 cache's drift is checked on its own.
"""

from __future__ import annotations

import json
import shutil
import string
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import DOCUMENTS, QUERY, ThreadServer, wait_until
from sentence_transformers.multi_vector_encoder import MultiVectorEncoder

from rerankd.api import create_app
from rerankd.config import Settings
from rerankd.engine.late_interaction import LateInteraction, maxsim
from rerankd.engine.tokenize import Tokenizer
from rerankd.engine.vector_cache import ENTRY_OVERHEAD_BYTES, VectorCache
from rerankd.errors import ModelNotFound
from rerankd.models import resolve_model
from rerankd.models.families import UnsupportedArchitecture
from rerankd.models.presets import CE_FIXTURE_ID
from rerankd.models.sentence_modules import UnsupportedModule
from testing.colbert_fixtures import build_pylate_colbert, build_stanford_colbert, build_tiny_modernbert_colbert

TOLERANCE = 1e-5
# OpenVINO pads its batches to a multiple of 16 tokens (queries' expansion masks included) and fuses differently.
ENGINES = [("torch", "fp32"), ("onnx", "fp32"), ("openvino", "fp32")]
LONG_QUERY = " ".join(["store data in a single file engine with key, document: edit!"] * 4)  # past query_length
REQUESTS = [
    (QUERY, [*DOCUMENTS, "Network file system (NFS) server & tools...", "x"]),
    (LONG_QUERY, DOCUMENTS),
]


@pytest.fixture(scope="module")
def colberts() -> dict[str, Path]:
    return {
        "pylate": build_pylate_colbert(),
        "stanford": build_stanford_colbert(),
        "modernbert": build_tiny_modernbert_colbert(),
    }


@pytest.fixture(scope="module")
def references(colberts: dict[str, Path]) -> dict[str, list[np.ndarray]]:
    answers = {}
    for layout, folder in colberts.items():
        model = MultiVectorEncoder(str(folder), device="cpu")
        answers[layout] = [
            model.similarity(model.encode_query([query]), model.encode_document(documents))[0].numpy()
            for query, documents in REQUESTS
        ]
    return answers


@pytest.fixture(scope="module", params=ENGINES, ids=["-".join(engine) for engine in ENGINES])
def server(request: pytest.FixtureRequest, colberts: dict[str, Path]) -> Iterator[str]:
    backend, precision = request.param
    settings = Settings(
        model=[str(folder) for folder in colberts.values()], backend=backend, precision=precision, device="cpu",
        warmup_seconds=0, embedding_model="", vector_cache_precision="fp32",
    )  # fmt: skip
    with ThreadServer(create_app(settings)) as srv:
        wait_until(lambda: httpx.get(f"{srv.url}/ready", timeout=5).status_code == 200, timeout=300, interval=0.2)
        yield srv.url


def _scores(url: str, dialect: str, model: str, query: str, documents: list[str]) -> np.ndarray:
    """One request in `dialect`; the scores in document order."""
    cohere = {"model": model, "query": query, "documents": documents}
    path, body, results, key = {
        "cohere-v2": ("/v2/rerank", cohere, "results", "relevance_score"),
        "jina-v1": ("/v1/rerank", cohere, "results", "relevance_score"),
        "tei": ("/rerank", {"model": model, "query": query, "texts": documents}, None, "score"),
    }[dialect]
    answer = httpx.post(url + path, json={**body, "strategy": "direct"}, timeout=120)
    assert answer.status_code == 200, answer.text
    items = answer.json() if results is None else answer.json()[results]
    scores = np.full(len(documents), np.nan)
    for item in items:
        scores[item["index"]] = item[key]
    return scores


@pytest.mark.parametrize("dialect", ["cohere-v2", "jina-v1", "tei"])
def test_scores_equal_the_multi_vector_encoder_over_http(
    server: str, colberts: dict[str, Path], references: dict[str, list[np.ndarray]], dialect: str
) -> None:
    for layout, folder in colberts.items():
        for (query, documents), expected in zip(REQUESTS, references[layout], strict=True):
            for attempt in ("cold", "cached"):  # the second answer comes from the vector cache
                got = _scores(server, dialect, str(folder), query, documents)
                assert np.abs(got - expected).max() <= TOLERANCE, (layout, attempt)
                assert list(np.argsort(-got)) == list(np.argsort(-expected)), (layout, attempt)


def test_models_list_the_late_interaction_kind(server: str, colberts: dict[str, Path]) -> None:
    listed = httpx.get(f"{server}/v1/models", timeout=10).json()
    kinds = {item["id"]: item.get("kind") for item in listed["data"]}
    assert {kinds.get(folder.name) for folder in colberts.values()} == {"late-interaction"}  # ids: folder names


# -- inputs: markers, expansion, skiplist ----------------------------------------------------------------------------


def _late(folder: Path) -> tuple[LateInteraction, Tokenizer]:
    spec = resolve_model(str(folder))
    tokenizer = Tokenizer(spec)
    return LateInteraction(spec, tokenizer, None, None), tokenizer


@pytest.mark.parametrize("layout", ["pylate", "stanford"])
def test_queries_are_expanded_with_the_mask_token_and_documents_skip_punctuation(
    colberts: dict[str, Path], layout: str
) -> None:
    from transformers import AutoTokenizer

    late, tokenizer = _late(colberts[layout])
    vocabulary = AutoTokenizer.from_pretrained(colberts[layout])
    query = late.encode_query(tokenizer.tokens(["what is sqlite"])[0])
    length = late.settings.query_length
    assert len(query.ids) == length
    real = int(np.argmax(query.ids == vocabulary.sep_token_id)) + 1
    assert (query.ids[real:] == vocabulary.mask_token_id).all() and real < length
    assert query.keep.all()  # MaxSim scores the expansion too
    assert query.attention[real:].all() == late.settings.attend_to_expansion  # Stanford fixture attends, PyLate not
    marker = "[Q] " if layout == "pylate" else "[unused0]"
    assert query.ids[1] == vocabulary.convert_tokens_to_ids(marker)

    (document,) = late.encode_documents(["SQLite, a C library: SQL (in one file)."])
    punctuation = {vocabulary.convert_tokens_to_ids(mark) for mark in string.punctuation}
    kept = set(document.ids[document.keep].tolist())
    assert punctuation & set(document.ids.tolist()) and not punctuation & kept
    assert document.ids[1] == vocabulary.convert_tokens_to_ids("[D] " if layout == "pylate" else "[unused1]")


def test_maxsim_is_the_sum_of_each_query_vectors_best_match() -> None:
    rng = np.random.default_rng(0)
    query = rng.normal(size=(4, 8)).astype(np.float32)
    documents = [rng.normal(size=(n, 8)).astype(np.float32) for n in (1, 5, 300)]
    expected = [sum(max(float(q @ d) for d in document) for q in query) for document in documents]
    assert np.allclose(maxsim(query, documents), expected, atol=1e-5)


# -- the vector cache ------------------------------------------------------------------------------------------------


def test_the_vector_cache_stays_within_its_bytes() -> None:
    limit = 2**20
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = VectorCache(limit, "rev", "fp16")
    rng = np.random.default_rng(0)
    for i in range(400):  # ~16 MiB of fp32 vectors offered, 20x the limit
        cache.put(cache.key(f"document {i}"), rng.normal(size=(int(rng.integers(20, 160)), 96)), 100, False)
        assert cache.bytes <= limit
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert held <= limit * 1.1, f"the cache holds {held} bytes for a {limit}-byte limit"
    assert cache.get_many([cache.key("document 399")])[0] is not None  # the latest stays, the oldest went
    assert cache.get_many([cache.key("document 0")])[0] is None
    assert len(cache) * ENTRY_OVERHEAD_BYTES < limit


def test_a_new_model_revision_misses_the_cache() -> None:
    assert VectorCache(2**20, "a").key("text") != VectorCache(2**20, "b").key("text")


@pytest.fixture(scope="module")
def cached_server(colberts: dict[str, Path]) -> Iterator[str]:
    """The PyLate fixture with the default fp16 vector cache, and the ce-fixture for cascades."""
    settings = Settings(
        model=[str(colberts["pylate"]), "ce-fixture"], backend="onnx", precision="fp32", device="cpu",
        warmup_seconds=0, embedding_model="", score_cache_mb=0,
    )  # fmt: skip
    with ThreadServer(create_app(settings)) as srv:
        wait_until(lambda: httpx.get(f"{srv.url}/ready", timeout=5).status_code == 200, timeout=300, interval=0.2)
        yield srv.url


def _metric(url: str, name: str, model: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_cached_documents_are_not_encoded_again(
    cached_server: str, colberts: dict[str, Path], references: dict[str, list[np.ndarray]]
) -> None:
    model = str(colberts["pylate"])
    label = colberts["pylate"].name  # metrics are labelled by the model id: its folder's name, never the path
    documents = [f"{document} (copy {i})" for i, document in enumerate(DOCUMENTS)]  # unseen by other tests
    misses, hits = (_metric(cached_server, f"rerankd_vector_cache_{k}_total", label) for k in ("misses", "hits"))
    batches = _metric(cached_server, "rerankd_batch_tokens_count", label)
    cold = _scores(cached_server, "cohere-v2", model, QUERY, documents)
    assert _metric(cached_server, "rerankd_vector_cache_misses_total", label) - misses == len(documents)
    warm = _scores(cached_server, "cohere-v2", model, "a different query about sqlite", documents)
    again = _scores(cached_server, "cohere-v2", model, QUERY, documents)
    assert _metric(cached_server, "rerankd_vector_cache_hits_total", label) - hits == 2 * len(documents)
    # The cold request's documents took at least one batch; each warm request encoded its query alone.
    assert _metric(cached_server, "rerankd_batch_tokens_count", label) - batches <= 2 + len(documents)
    assert not np.allclose(warm, cold)
    assert np.abs(again - cold).max() <= 2e-3  # fp16 storage: ~1e-3 on scores of 5-30
    assert list(np.argsort(-again)) == list(np.argsort(-cold))
    assert _metric(cached_server, "rerankd_vector_cache_bytes", label) > 0


def test_a_colbert_is_a_cascades_first_stage(cached_server: str, colberts: dict[str, Path]) -> None:
    model = str(colberts["pylate"])
    documents = [*DOCUMENTS, "Network file system server and tools.", "A database of package descriptions."]
    first = _scores(cached_server, "cohere-v2", model, QUERY, documents)
    body = {"model": CE_FIXTURE_ID, "query": QUERY, "documents": documents, "strategy": "hybrid", "candidates": 3}
    answer = httpx.post(f"{cached_server}/v2/rerank", json={**body, "first_stage_model": model}, timeout=120)
    assert answer.status_code == 200, answer.text
    assert f"prefilter=model:{colberts['pylate'].name}" in answer.headers["X-Rerankd-Strategy"]
    scored = {item["index"] for item in answer.json()["results"][:3]}
    assert scored == set(np.argsort(-first)[:3].tolist())  # the cross-encoder scored the ColBERT's top 3


# -- refusals --------------------------------------------------------------------------------------------------------


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(folder, target)
    return target


def _edit(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_body_that_needs_remote_code_is_refused(colberts: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(colberts["pylate"], tmp_path)
    _edit(folder / "config.json", auto_map={"AutoModel": "jinaai/xlm-roberta-flash-implementation--modeling.Model"})
    with pytest.raises(UnsupportedArchitecture, match="remote code"):
        resolve_model(str(folder))


def test_an_unverified_body_is_refused_naming_the_supported_ones(colberts: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(colberts["pylate"], tmp_path)
    _edit(folder / "config.json", model_type="xlm-roberta")
    with pytest.raises(UnsupportedArchitecture) as caught:
        resolve_model(str(folder))
    assert "'xlm-roberta'" in str(caught.value) and "bert" in str(caught.value)


def test_a_stanford_checkpoint_with_l2_similarity_is_refused(colberts: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(colberts["stanford"], tmp_path)
    _edit(folder / "artifact.metadata", similarity="l2")
    with pytest.raises(UnsupportedModule, match="'l2'"):
        resolve_model(str(folder))


def test_a_pooling_module_in_a_colbert_is_refused(colberts: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(colberts["pylate"], tmp_path)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Pooling", "type": "sentence_transformers.models.Pooling"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "2_Pooling").mkdir()
    (folder / "2_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "mean"}))
    with pytest.raises(ModelNotFound, match="Pooling"):
        resolve_model(str(folder))
