"""Cache folders are built once, by one builder at a time, and a failed build leaves nothing that looks done."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rerankd.cachedir import build_once


def test_concurrent_callers_wait_for_one_build(tmp_path: Path) -> None:
    builds = []
    lock = threading.Lock()

    def build(staging: Path) -> None:
        with lock:
            builds.append(staging)
        time.sleep(0.2)  # long enough for the other callers to find the lock taken
        (staging / "done").write_text("ok")

    folder = tmp_path / "model"
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: build_once(folder, build, done="done"), range(4)))
    assert results == [folder] * 4
    assert len(builds) == 1
    assert (folder / "done").read_text() == "ok"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model", "model.lock"]  # no staging left


def test_a_failed_build_leaves_nothing_and_the_next_call_builds(tmp_path: Path) -> None:
    folder = tmp_path / "model"

    def broken(staging: Path) -> None:
        (staging / "half").write_text("")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        build_once(folder, broken, done="done")
    assert not folder.exists()
    assert [path.name for path in tmp_path.iterdir()] == ["model.lock"]

    folder.mkdir()  # a leftover from an older, non-atomic build: replaced
    build_once(folder, lambda staging: (staging / "done").write_text("ok"), done="done")
    assert sorted(path.name for path in folder.iterdir()) == ["done"]
