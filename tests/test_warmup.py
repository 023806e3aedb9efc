"""The warm-up costs a few batches whatever the model: one batch pays the one-off costs, then the speed is measured
on batches around the median of the realistic 20-300 token mix (at least two, more while `warmup_seconds` lasts).
An LLM's batch takes seconds on a CPU, so a warm-up sized in documents cost minutes (issue 11)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rerankd.backends import Backend, Batch, load_backend
from rerankd.config import Settings
from rerankd.engine.engine import Engine
from rerankd.engine.tokenize import Tokenizer
from rerankd.models import resolve_model


class Recording:
    """A loaded backend that also records the shape (rows, padded length) of every batch it runs."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self.shapes: list[tuple[int, int]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._backend, name)

    def forward(self, batch: Batch) -> np.ndarray:
        self.shapes.append(batch.input_ids.shape)
        return self._backend.forward(batch)


@pytest.fixture
def engine(ce_fixture_path: Path, tmp_path: Path) -> Iterator[tuple[Engine, Recording]]:
    """The ce-fixture (MiniLM-L6 shape) on torch fp32 at the default 2,048-token budget."""
    spec = resolve_model("ce-fixture")
    settings = Settings(
        model=["ce-fixture"], backend="torch", precision="fp32", device="cpu", max_batch_tokens=2048,
        score_cache_mb=0, embedding_model="", cache_dir=tmp_path,
    )  # fmt: skip
    backend = Recording(load_backend(spec, settings))
    warmed = Engine(spec, Tokenizer(spec), backend, settings)  # type: ignore[arg-type]
    try:
        yield warmed, backend
    finally:
        warmed.close()


def test_warmup_zero_runs_three_batches_from_the_middle_of_the_mix(engine: tuple[Engine, Recording]) -> None:
    warmed, backend = engine
    calibration = warmed.warmup(0)
    # One unmeasured batch, two measured: fewer pairs than the 64 warm-up documents (it used to run 2 x 64).
    assert len(backend.shapes) == 3
    assert sum(rows for rows, _ in backend.shapes) < 64
    # Length-sorted batches taken from the median outwards: the median one, the next longer, the next shorter.
    (_, median), (_, longer), (_, shorter) = backend.shapes
    assert shorter <= median <= longer
    assert all(60 < width < 300 for _, width in backend.shapes)  # typical requests, not the mix's extremes
    # The calibration is the two measured batches' (the first run's one-off costs are left out).
    measured = backend.shapes[1:]
    padded_per_pair = sum(rows * width for rows, width in measured) / sum(rows for rows, _ in measured)
    assert calibration.tokens_per_second / calibration.pairs_per_second == pytest.approx(padded_per_pair)
    assert warmed.calibration == calibration and calibration.pairs_per_second > 0
