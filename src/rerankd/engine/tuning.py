"""Per-machine tuning of the batch token budget (`max_batch_tokens: 0`): a short sweep at the first warm-up, the
choice cached per model revision, backend, device, precision, CPU and thread count. Why and how: docs/architecture.md
(Design notes, Batch budget tuning).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rerankd.cores import available_cores
from rerankd.engine.scheduler import SizedInput, pack_batches
from rerankd.reporting import cpu

if TYPE_CHECKING:
    from rerankd.backends import Backend
    from rerankd.config import Settings
    from rerankd.models import ModelSpec

log = logging.getLogger(__name__)

CANDIDATES = (512, 1024, 2048, 4096, 8192)
FALLBACK = 2048  # the budget used while no measurement exists (measured best on the 2-core Zen 3)
SWEEP_SECONDS = 6.0  # upper bound of one sweep; the largest candidates are skipped when they would not fit
SWEEP_ROUNDS = 3  # interleaved rounds at most; the best time per candidate counts
TUNING_VERSION = 1  # bump when the measurement changes, so older choices are measured again

# Single-token words, so a document of n words is about n tokens for every WordPiece / BPE vocabulary.
_WORDS = "the of and to in is for on with as by at from this that package library data file system".split()  # noqa: SIM905


@dataclass(frozen=True)
class TuningKey:
    """Everything the best budget depends on; `digest` names its cache file."""

    model: str
    revision: str
    backend: str
    device: str
    precision: str
    cpu_model: str
    cpu_flags: tuple[str, ...]
    threads: int
    version: int = TUNING_VERSION

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Tuning:
    """The budget an engine runs with, where it came from, and what the sweep measured (real tokens/s)."""

    max_batch_tokens: int
    source: str  # "configured", "cached", "measured" or "default" (auto, not measured yet)
    rates: dict[int, float] = field(default_factory=dict)

    def describe(self) -> str:
        measured = ", ".join(f"{budget}: {rate:.0f}" for budget, rate in sorted(self.rates.items()))
        return f"max_batch_tokens={self.max_batch_tokens} ({self.source}{'; tokens/s ' + measured if measured else ''})"


def tuning_key(
    *, model: str, revision: str, backend: str, device: str, precision: str, threads: int, cpu: dict[str, Any]
) -> TuningKey:
    return TuningKey(model, revision, backend, device, precision, str(cpu["model"]), tuple(cpu["flags"]), threads)


def cache_file(cache_dir: Path, key: TuningKey) -> Path:
    return Path(cache_dir) / "tuning" / f"{key.model.rstrip('/').rsplit('/', 1)[-1]}-{key.digest}.json"


def load_cached(path: Path, key: TuningKey) -> Tuning | None:
    """The cached choice for `key`, or None when there is none (or it is unreadable or for another key)."""
    try:
        record = json.loads(path.read_text())
        if record.get("key") != asdict(key) | {"cpu_flags": list(key.cpu_flags)}:
            return None
        rates = {int(budget): float(rate) for budget, rate in record.get("rates", {}).items()}
        return Tuning(int(record["max_batch_tokens"]), "cached", rates)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(path: Path, key: TuningKey, tuning: Tuning) -> None:
    """Write the choice atomically (a reader never sees half a file); failing to write only costs a re-measure."""
    record = {
        "key": asdict(key) | {"cpu_flags": list(key.cpu_flags)},
        "max_batch_tokens": tuning.max_batch_tokens,
        "rates": {str(budget): rate for budget, rate in sorted(tuning.rates.items())},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}")
        staging.write_text(json.dumps(record, indent=2))
        staging.replace(path)
    except OSError as exc:
        log.warning("could not cache the tuning choice in %s: %s", path, exc)


def sample_documents(count: int = 256, seed: int = 0) -> list[str]:
    """`count` documents of 20-300 words (uniform), each word one token: the realistic mix of lengths."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(_WORDS, size=int(n))) for n in rng.integers(20, 301, size=count)]


def sweep(
    run: Callable[[list], object],
    items: Sequence[SizedInput],
    *,
    max_batch_size: int,
    seconds: float = SWEEP_SECONDS,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[int, float]:
    """Real (unpadded) tokens per second of `run` at each candidate budget.

    Each candidate runs the batch that `pack_batches` forms around the median item at that budget (so padding is
    what a length-sorted window of this sample has), in interleaved rounds; the best time counts. Candidates whose
    batch would not fit in what is left of `seconds` (estimated from the speed measured so far) are skipped, so the
    sweep stays bounded on slow machines; the smallest candidate always runs.
    """
    median = sorted(items, key=len)[len(items) // 2]
    batches: dict[int, list] = {}
    for budget in CANDIDATES:
        planned = pack_batches(items, budget, max_batch_size)
        batches[budget] = next(batch for batch in planned if any(item is median for item in batch))
    best: dict[int, float] = {}
    deadline = clock() + seconds
    for _ in range(SWEEP_ROUNDS):
        for budget, batch in batches.items():
            padded = len(batch) * max(len(item) for item in batch)
            speed = max(best.values(), default=0.0)  # real tokens/s so far: a fair estimate of this batch's time
            if best and speed and clock() + padded / speed > deadline:
                continue
            started = clock()
            run(batch)
            elapsed = max(clock() - started, 1e-9)
            best[budget] = max(best.get(budget, 0.0), sum(len(item) for item in batch) / elapsed)
        if clock() >= deadline:
            break
    return best


def pick(rates: dict[int, float], tolerance: float = 0.03) -> int:
    """The fastest budget; among those within `tolerance` of it, the smallest (shorter waits for a newcomer under
    fair scheduling, less memory), so that noise does not push the choice to large batches."""
    fastest = max(rates.values())
    return min(budget for budget, rate in rates.items() if rate >= fastest * (1 - tolerance))


def tune(
    run: Callable[[list], object],
    items: Sequence[SizedInput],
    *,
    max_batch_size: int,
    cache: Path,
    key: TuningKey,
    seconds: float = SWEEP_SECONDS,
    clock: Callable[[], float] = time.perf_counter,
) -> Tuning:
    """Measure the best budget (the sweep) and cache it under `cache`; the cached choice when there is one."""
    if (found := load_cached(cache, key)) is not None:
        return found
    rates = sweep(run, items, max_batch_size=max_batch_size, seconds=seconds, clock=clock)
    tuning = Tuning(pick(rates), "measured", rates)
    save(cache, key, tuning)
    return tuning


class BatchTuner:
    """The tuning of one engine: the budget it starts with, and the sweep its warm-up runs when auto has no
    cached choice yet."""

    def __init__(self, spec: ModelSpec, backend: Backend, settings: Settings) -> None:
        self.cpu = cpu()
        self.threads = settings.threads or available_cores()
        self.key = tuning_key(
            model=spec.name,
            revision=spec.revision,
            backend=backend.name,
            device=backend.device,
            precision=backend.precision,
            threads=self.threads,
            cpu=self.cpu,
        )
        self.cache = cache_file(settings.cache_dir, self.key)
        if settings.max_batch_tokens:
            self.tuning = Tuning(settings.max_batch_tokens, "configured")
        else:  # the cached choice, else the fallback until the warm-up's sweep
            self.tuning = load_cached(self.cache, self.key) or Tuning(FALLBACK, "default")

    def measure(
        self,
        run: Callable[[list], object],
        prepare: Callable[[list[str]], Sequence[SizedInput]],
        *,
        max_batch_size: int,
    ) -> Tuning:
        """Sweep and cache when auto has no measurement yet; log the CPU and the choice either way."""
        if self.tuning.source == "default":
            started = time.perf_counter()
            items = prepare(sample_documents())
            self.tuning = tune(run, items, max_batch_size=max_batch_size, cache=self.cache, key=self.key)
            log.info("batch budget sweep took %.1f s", time.perf_counter() - started)
        log.info(
            "%s on %s [%s], %d threads: %s",
            self.key.model,
            self.cpu["model"],
            " ".join(self.cpu["flags"]) or "no AVX2",
            self.threads,
            self.tuning.describe(),
        )
        return self.tuning
