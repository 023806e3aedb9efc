"""Cached exports are verified by their SHA-256 digests: a cached file that was flipped, truncated, emptied or
replaced on disk is rebuilt (with a warning in the log), never loaded and served."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import DOCUMENTS, QUERY, served
from sentence_transformers import CrossEncoder

from rerankd.backends.export import ExportOptions, cache_folder, ensure_onnx
from rerankd.cachedir import DIGESTS, build_once, digest_problem, sha256, write_digests
from rerankd.models import resolve_model


def flip_4kb(path: Path) -> None:
    # At 4/5 of the file: the encoder layers' weights (flipped there, the ce-fixture's scores move by ~0.1; the
    # middle holds vocabulary rows the test texts never use, where a flip changes no score).
    data = bytearray(path.read_bytes())
    start = len(data) * 4 // 5
    data[start : start + 4096] = bytes(byte ^ 0xFF for byte in data[start : start + 4096])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "flip 4 KB": flip_4kb,
    "truncated": truncate,
    "empty": empty,
    "garbage": garbage,
}


# -- the digests themselves --------------------------------------------------------------------------------------


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
def test_every_corruption_fails_the_digest_check(tmp_path: Path, corrupt) -> None:
    (tmp_path / "model.onnx").write_bytes(os.urandom(64 * 1024))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "weights.bin").write_bytes(b"weights")
    write_digests(tmp_path)
    assert digest_problem(tmp_path) is None
    corrupt(tmp_path / "model.onnx")
    assert digest_problem(tmp_path) == f"model.onnx does not match its SHA-256 in {DIGESTS}"


def test_digests_are_sha256sum_files_and_notice_missing_and_added_files(tmp_path: Path) -> None:
    assert digest_problem(tmp_path) == f"no {DIGESTS}"
    (tmp_path / "a").write_text("a")
    write_digests(tmp_path)
    assert (tmp_path / DIGESTS).read_text() == f"{sha256(tmp_path / 'a')}  a\n"  # `sha256sum -c` reads it
    (tmp_path / "b").write_text("b")
    assert digest_problem(tmp_path) == f"b is not in {DIGESTS}"
    (tmp_path / "b").unlink()
    (tmp_path / "a").unlink()
    assert digest_problem(tmp_path) == "a is missing"


def test_build_once_with_verify_rebuilds_a_changed_folder_and_reuses_an_intact_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    builds = []

    def build(staging: Path) -> None:
        builds.append(staging)
        (staging / "done").write_text("the real thing")

    folder = tmp_path / "cached"
    build_once(folder, build, done="done", verify=True)
    build_once(folder, build, done="done", verify=True)
    assert len(builds) == 1  # intact: reused
    (folder / "done").write_text("tampered")
    with caplog.at_level(logging.WARNING, logger="rerankd.cachedir"):
        build_once(folder, build, done="done", verify=True)
    assert len(builds) == 2 and (folder / "done").read_text() == "the real thing"
    assert any("rebuilding" in record.getMessage() and str(folder) in record.getMessage() for record in caplog.records)
    (folder / DIGESTS).unlink()  # a cache written before digests existed: not trusted
    build_once(folder, build, done="done", verify=True)
    assert len(builds) == 3 and digest_problem(folder) is None


# -- the ONNX export cache ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(ce_fixture_path: Path) -> np.ndarray:
    return CrossEncoder(str(ce_fixture_path), device="cpu").predict([(QUERY, d) for d in DOCUMENTS])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the ce-fixture and its fp32 export, built once; each test corrupts a copy."""
    cache = tmp_path_factory.mktemp("exported")
    ensure_onnx(resolve_model("ce-fixture", cache_dir=cache), "fp32", cache)
    return cache


@pytest.mark.slow  # a `rerankd serve` process per case
@pytest.mark.parametrize("corrupt", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
def test_a_corrupted_cached_export_is_rebuilt_by_the_server_which_serves_the_reference_scores(
    tmp_path: Path, exported: Path, reference: np.ndarray, corrupt
) -> None:
    shutil.copytree(exported, tmp_path, dirs_exist_ok=True)
    spec = resolve_model("ce-fixture", cache_dir=tmp_path)
    cached = cache_folder(spec, ExportOptions(spec.kind, "fp32"), tmp_path) / "model.onnx"
    assert digest_problem(cached.parent) is None
    corrupt(cached)
    arguments = [
        "--model", "ce-fixture", "--cache-dir", str(tmp_path), "--backend", "onnx", "--precision", "fp32",
        "--warmup-seconds", "0", "--embedding-model", "",
    ]  # fmt: skip
    log = tmp_path / "server.log"
    with served(arguments, log) as (url, _):
        answer = httpx.post(f"{url}/rerank", json={"query": QUERY, "texts": DOCUMENTS}, timeout=60).json()
    scores = {item["index"]: item["score"] for item in answer}
    assert [scores[i] for i in range(len(DOCUMENTS))] == pytest.approx(list(reference), abs=1e-5)
    assert "is not what was built" in log.read_text() and "rebuilding it" in log.read_text()
    assert digest_problem(cached.parent) is None


@pytest.mark.slow  # calibrates or compiles models: out of the edit loop (make test-fast)
def test_a_corrupted_int8_file_is_rebuilt_to_the_same_bytes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = resolve_model("ce-fixture", cache_dir=tmp_path)
    int8 = ensure_onnx(spec, "int8", tmp_path)
    built = sha256(int8)
    fp32_folder = cache_folder(spec, ExportOptions(spec.kind, "fp32"), tmp_path)
    fp32_built = sha256(fp32_folder / "model.onnx")
    flip_4kb(int8)
    with caplog.at_level(logging.WARNING, logger="rerankd.cachedir"):
        again = ensure_onnx(spec, "int8", tmp_path)
    assert again == int8 and sha256(int8) == built  # quantizing the same fp32 file again gives the same file
    assert sha256(fp32_folder / "model.onnx") == fp32_built  # its intact fp32 source was reused, not re-exported
    assert next(r for r in caplog.records if "rebuilding" in r.getMessage()).levelno == logging.WARNING
