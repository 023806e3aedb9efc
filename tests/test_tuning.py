"""Per-machine tuning of `max_batch_tokens`: the sweep picks the fastest budget, the choice is cached per machine
and reused, and an explicit setting always wins. Costs come from a model of the machine, not from timing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rerankd.backends import Batch
from rerankd.config import Settings
from rerankd.engine import tuning
from rerankd.engine.engine import Engine
from rerankd.engine.tokenize import Tokenizer
from rerankd.engine.tuning import CANDIDATES, Tuning, cache_file, pick, sweep, tune, tuning_key
from rerankd.models import resolve_model


class Item:
    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length


class Machine:
    """A simulated CPU: a batch costs its padded tokens / speed plus a fixed overhead per call; the speed grows
    with the batch up to `sweet_spot` padded tokens (bigger matrix products) and falls past it (activations leave
    the cache). `clock` is its time."""

    def __init__(self, sweet_spot: int, overhead: float = 0.02) -> None:
        self.sweet_spot = sweet_spot
        self.overhead = overhead
        self.now = 0.0
        self.calls: list[int] = []

    def clock(self) -> float:
        return self.now

    def run(self, batch: list) -> None:
        padded = len(batch) * max(len(item) for item in batch)
        ratio = padded / self.sweet_spot
        speed = 10_000.0 * (ratio**0.5 if ratio <= 1 else 1 / ratio)
        self.now += self.overhead + padded / speed
        self.calls.append(padded)


def sample(count: int = 256) -> list[Item]:
    rng = np.random.default_rng(0)
    return [Item(int(n)) for n in rng.integers(20, 301, size=count)]


@pytest.mark.parametrize("sweet_spot", [1024, 2048, 8192])
def test_the_sweep_picks_the_budget_the_machine_runs_fastest(sweet_spot: int) -> None:
    machine = Machine(sweet_spot)
    rates = sweep(machine.run, sample(), max_batch_size=128, seconds=60, clock=machine.clock)
    assert set(rates) == set(CANDIDATES)
    assert pick(rates) == sweet_spot


def test_the_sweep_stays_within_its_time_bound_and_always_measures_something() -> None:
    machine = Machine(sweet_spot=512)  # larger batches are slow here: they would not fit the bound
    rates = sweep(machine.run, sample(), max_batch_size=128, seconds=0.5, clock=machine.clock)
    assert 512 in rates
    assert machine.now <= 0.5 + 0.2  # at most one batch started before the deadline runs past it
    assert len(rates) < len(CANDIDATES)


def test_pick_prefers_the_smaller_budget_when_speeds_are_within_noise() -> None:
    assert pick({1024: 1000.0, 2048: 1010.0, 4096: 1000.0}) == 1024
    assert pick({1024: 900.0, 2048: 1000.0}) == 2048


def key(**changes: object) -> tuning.TuningKey:
    facts = {"model": "org/m", "revision": "r1", "backend": "onnx", "device": "cpu", "precision": "fp32"}
    return tuning_key(**(facts | changes), threads=2, cpu={"model": "AMD EPYC", "flags": ["avx2", "fma"]})  # type: ignore[arg-type]


def test_the_choice_is_cached_and_reused_without_measuring_again(tmp_path: Path) -> None:
    path = cache_file(tmp_path, key())
    first = Machine(sweet_spot=4096)
    chosen = tune(first.run, sample(), max_batch_size=128, cache=path, key=key(), seconds=60, clock=first.clock)
    assert (chosen.source, chosen.max_batch_tokens) == ("measured", 4096)
    assert json.loads(path.read_text())["max_batch_tokens"] == 4096

    second = Machine(sweet_spot=512)  # would choose otherwise, but is never asked
    again = tune(second.run, sample(), max_batch_size=128, cache=path, key=key(), seconds=60, clock=second.clock)
    assert (again.source, again.max_batch_tokens) == ("cached", 4096)
    assert second.calls == []


def test_the_cache_is_keyed_by_model_revision_precision_cpu_and_threads(tmp_path: Path) -> None:
    base = cache_file(tmp_path, key())
    assert cache_file(tmp_path, key(revision="r2")) != base
    assert cache_file(tmp_path, key(precision="int8")) != base
    other_cpu = tuning_key(
        model="org/m", revision="r1", backend="onnx", device="cpu", precision="fp32", threads=2,
        cpu={"model": "AMD EPYC", "flags": ["avx2", "fma", "avx512_vnni"]},
    )  # fmt: skip
    more_threads = tuning_key(
        model="org/m", revision="r1", backend="onnx", device="cpu", precision="fp32", threads=4,
        cpu={"model": "AMD EPYC", "flags": ["avx2", "fma"]},
    )  # fmt: skip
    assert len({base, cache_file(tmp_path, other_cpu), cache_file(tmp_path, more_threads)}) == 3
    # A file for another key (or a damaged one) is not trusted.
    base.parent.mkdir(parents=True)
    base.write_text(json.dumps({"key": {"model": "else"}, "max_batch_tokens": 512}))
    assert tuning.load_cached(base, key()) is None
    base.write_text("{not json")
    assert tuning.load_cached(base, key()) is None


class CountingBackend:
    """Zeros for every input; counts its batches. Stands in for inference so the test measures nothing real."""

    name, device, precision, width_multiple, parallel_batches = "onnx", "cpu", "fp32", 1, 1

    def __init__(self) -> None:
        self.batches = 0

    def forward(self, batch: Batch) -> np.ndarray:
        self.batches += 1
        return np.ones((len(batch), 8), dtype=np.float32)


def engine(settings: Settings) -> tuple[Engine, CountingBackend]:
    spec = resolve_model("default")  # packaged: no network
    backend = CountingBackend()
    return Engine(spec, Tokenizer(spec), backend, settings), backend  # type: ignore[arg-type]


def test_auto_is_measured_at_the_first_warm_up_then_reused_by_the_next_start(tmp_path: Path) -> None:
    settings = Settings(max_batch_tokens=0, cache_dir=tmp_path, score_cache_mb=0)
    first, _ = engine(settings)
    try:
        assert first.tuner.tuning.source == "default"
        assert first.scheduler.max_batch_tokens == tuning.FALLBACK
        first.warmup(0.01)
        chosen = first.tuner.tuning
        assert chosen.source == "measured" and chosen.max_batch_tokens in CANDIDATES
        assert first.scheduler.max_batch_tokens == chosen.max_batch_tokens
        assert first.tuner.cache.is_file()
    finally:
        first.close()

    second, _ = engine(settings)
    try:  # the next start on this machine begins with the cached choice, before any warm-up
        assert second.tuner.tuning == Tuning(chosen.max_batch_tokens, "cached", chosen.rates)
        assert second.scheduler.max_batch_tokens == chosen.max_batch_tokens
        second.warmup(0.01)
        assert second.tuner.tuning.source == "cached"
    finally:
        second.close()


def test_an_explicit_budget_wins_and_nothing_is_measured_or_cached(tmp_path: Path) -> None:
    explicit, _ = engine(Settings(max_batch_tokens=1536, cache_dir=tmp_path, score_cache_mb=0))
    try:
        explicit.warmup(0.01)
        assert explicit.tuner.tuning == Tuning(1536, "configured")
        assert explicit.scheduler.max_batch_tokens == 1536
        assert not (tmp_path / "tuning").exists()
    finally:
        explicit.close()


def test_without_a_warm_up_auto_runs_the_fallback_until_measured(tmp_path: Path) -> None:
    quick, backend = engine(Settings(max_batch_tokens=0, cache_dir=tmp_path, score_cache_mb=0))
    try:
        quick.warmup(0)  # `rerankd rerank` and benchmarks skip the warm-up: no sweep, no start-up cost
        assert quick.tuner.tuning.source == "default"
        assert quick.scheduler.max_batch_tokens == tuning.FALLBACK
        assert backend.batches > 0
    finally:
        quick.close()


def test_max_batch_tokens_accepts_zero_for_auto_and_refuses_tiny_budgets() -> None:
    assert Settings(max_batch_tokens=0).max_batch_tokens == 0
    with pytest.raises(ValueError, match="0 \\(auto\\) or at least 64"):
        Settings(max_batch_tokens=10)


# -- batches as large as the budget allows: a tuned budget is worth only what the scheduler's batches reach --------


@pytest.mark.parametrize("count", [300, 1000])
def test_one_large_request_gets_full_batches_under_fair_scheduling(count: int) -> None:
    """Fair windows are one batch each: one request's inputs are batched as `pack_batches` would batch them all
    (the old unpadded window budget overshot it, adding a one-input batch after nearly every full one)."""
    import asyncio

    from rerankd.engine.scheduler import Scheduler, pack_batches

    items = [Item(n + 12) for n in np.random.default_rng(0).integers(20, 301, size=count)]
    batches: list[list[int]] = []

    def run(batch: list) -> np.ndarray:
        batches.append([len(item) for item in batch])
        return np.zeros((len(batch), 1))

    scheduler = Scheduler(run, max_batch_tokens=2048, max_batch_size=128, max_queued_pairs=10_000, fair=True)
    try:
        asyncio.run(scheduler.submit(items))
    finally:
        scheduler.close()
    assert all(len(batch) * max(batch) <= 2048 for batch in batches)
    assert len(batches) == len(pack_batches(items, 2048, 128))
    assert sum(len(batch) == 1 for batch in batches) == 0
