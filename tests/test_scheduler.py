"""The batching queue: rows go back to the right request, budgets hold, cancelled work is dropped."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rerankd.engine.scheduler import Scheduler, pack_batches
from rerankd.errors import EngineFailure, Overloaded


class Item:
    """An input of `length` tokens whose output row is its own id: a wrong row is visible at once."""

    def __init__(self, ident: int, length: int) -> None:
        self.ident = ident
        self.length = length

    def __len__(self) -> int:
        return self.length


class Recorder:
    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[Item]] = []
        self.gate = gate

    def __call__(self, items: list[Item]) -> np.ndarray:
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(items)
        return np.array([[item.ident, len(item)] for item in items], dtype=np.float64)


def make(run, **overrides) -> Scheduler:
    options = {"max_batch_tokens": 256, "max_batch_size": 16, "max_queued_pairs": 10_000} | overrides
    return Scheduler(run, **options)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.lists(st.integers(1, 120), min_size=1, max_size=30), min_size=1, max_size=12),
    st.booleans(),
    st.sampled_from([1, 2, 3]),
)
def test_concurrent_requests_each_get_their_own_rows_in_order(
    requests: list[list[int]], fair: bool, workers: int
) -> None:
    recorder = Recorder()
    scheduler = make(recorder, fair=fair, workers=workers)

    async def main() -> list[np.ndarray]:
        jobs = []
        for r, lengths in enumerate(requests):
            items = [Item(r * 1000 + i, length) for i, length in enumerate(lengths)]
            jobs.append(scheduler.submit(items))
        return await asyncio.gather(*jobs)

    try:
        results = asyncio.run(main())
    finally:
        scheduler.close()
    for r, (lengths, rows) in enumerate(zip(requests, results, strict=True)):
        assert rows[:, 0].tolist() == [r * 1000 + i for i in range(len(lengths))]
        assert rows[:, 1].tolist() == lengths
    for batch in recorder.batches:
        assert len(batch) * max(map(len, batch)) <= 256 or len(batch) == 1
        assert len(batch) <= 16
    assert scheduler.stats().queued_pairs == 0


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `condition` (no fixed sleeps: a slow machine only makes it wait longer)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the scheduler never reached the expected state"
        await asyncio.sleep(0.005)


def busy(scheduler: Scheduler) -> Callable[[], bool]:
    return lambda: scheduler.stats().inflight_pairs > 0  # the worker is inside a batch


def queued(scheduler: Scheduler, pairs: int) -> Callable[[], bool]:
    return lambda: scheduler.stats().queued_pairs == pairs


def test_workers_run_batches_side_by_side_and_count_them_all_in_flight() -> None:
    """Two workers (a backend with two streams): one request of two batches has both inside `run` at once (the
    worker that took the first wakes the other), both counted in flight; nothing is left queued or in flight."""
    both_inside = threading.Barrier(2, timeout=10)
    release = threading.Event()

    def run(items: list[Item]) -> np.ndarray:
        both_inside.wait()  # breaks (BrokenBarrierError) unless the second batch starts while this one runs
        release.wait(10)
        return np.array([[item.ident, len(item)] for item in items], dtype=np.float64)

    scheduler = make(run, max_batch_tokens=100, workers=2)

    async def main() -> np.ndarray:
        request = asyncio.ensure_future(scheduler.submit([Item(i, 50) for i in range(4)]))
        await until(lambda: scheduler.stats().inflight_pairs == 4)  # both batches, two pairs each
        assert scheduler.stats().inflight_tokens == 200
        release.set()
        return await request

    try:
        rows = asyncio.run(main())
    finally:
        scheduler.close()
    assert rows[:, 0].tolist() == [0, 1, 2, 3]
    stats = scheduler.stats()
    assert (stats.inflight_pairs, stats.inflight_tokens, stats.queued_pairs, stats.batches_done) == (0, 0, 0, 2)


def test_batches_mix_requests_and_are_length_sorted() -> None:
    gate = threading.Event()
    recorder = Recorder(gate)
    scheduler = make(recorder, max_batch_tokens=4096, max_batch_size=64)

    async def main() -> None:
        first = asyncio.ensure_future(scheduler.submit([Item(0, 10)]))  # occupies the worker
        await until(busy(scheduler))
        waiting = [
            asyncio.ensure_future(scheduler.submit([Item(r, 50 - r), Item(100 + r, 5 + r)])) for r in range(1, 9)
        ]
        await until(queued(scheduler, 16))
        gate.set()
        await asyncio.gather(first, *waiting)

    asyncio.run(main())
    scheduler.close()
    assert len(recorder.batches) == 2  # all eight waiting requests shared one batch
    lengths = [len(item) for item in recorder.batches[1]]
    assert lengths == sorted(lengths) and len(lengths) == 16


def test_plan_respects_the_token_budget() -> None:
    items = [Item(i, length) for i, length in enumerate([300, 5, 90, 90, 12, 200, 64, 64, 64, 64])]
    batches = pack_batches(items, max_batch_tokens=256, max_batch_size=3)
    assert sorted(i.ident for batch in batches for i in batch) == list(range(10))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) * max(map(len, batch)) <= 256 or len(batch) == 1


@pytest.mark.parametrize("fair", [True, False])
def test_a_small_request_waits_behind_a_large_one_only_in_fifo_mode(fair: bool) -> None:
    """Fair: the small request's turn comes after one batch of the large one; fifo: after all of it."""
    gate = threading.Event()
    recorder = Recorder(gate)
    scheduler = make(recorder, fair=fair)  # batches of 256 tokens, windows of 1,024
    finished: list[str] = []

    async def main() -> None:
        running = asyncio.ensure_future(scheduler.submit([Item(0, 10)]))
        await until(busy(scheduler))  # the worker now blocks inside the first batch
        large = asyncio.ensure_future(scheduler.submit([Item(1000 + i, 64) for i in range(64)]))  # 16 batches
        small = asyncio.ensure_future(scheduler.submit([Item(1, 64), Item(2, 64)]))
        large.add_done_callback(lambda _: finished.append("large"))
        small.add_done_callback(lambda _: finished.append("small"))
        await until(queued(scheduler, 66))
        gate.set()
        await asyncio.gather(running, large, small)

    try:
        asyncio.run(main())
    finally:
        scheduler.close()
    batch_of = {item.ident: n for n, batch in enumerate(recorder.batches) for item in batch}
    if fair:
        assert finished == ["small", "large"]
        assert batch_of[1] <= 2 and batch_of[2] <= 2  # in the first window after the blocked batch
    else:
        assert finished == ["large", "small"]
        assert batch_of[1] > max(batch_of[1000 + i] for i in range(64))


def test_cancelled_request_frees_its_queue_entries() -> None:
    gate = threading.Event()
    recorder = Recorder(gate)
    scheduler = make(recorder)

    async def main() -> None:
        running = asyncio.ensure_future(scheduler.submit([Item(1, 10)]))
        await until(busy(scheduler))  # the worker now blocks inside the first batch
        doomed = asyncio.ensure_future(scheduler.submit([Item(2, 10), Item(3, 10), Item(4, 10)]))
        await until(queued(scheduler, 3))
        doomed.cancel()
        await until(queued(scheduler, 0))
        assert scheduler.stats().queued_tokens == 0
        gate.set()
        await running

    asyncio.run(main())
    scheduler.close()
    assert [item.ident for batch in recorder.batches for item in batch] == [1]


def test_full_queue_raises_overloaded_with_retry_after() -> None:
    gate = threading.Event()
    scheduler = make(Recorder(gate), max_queued_pairs=4)

    async def main() -> None:
        running = asyncio.ensure_future(scheduler.submit([Item(0, 8)]))
        await until(busy(scheduler))
        waiting = asyncio.ensure_future(scheduler.submit([Item(1, 8)] * 3))
        await until(queued(scheduler, 3))
        with pytest.raises(Overloaded) as info:
            await scheduler.submit([Item(2, 8)] * 2)
        assert info.value.retry_after >= 1
        gate.set()
        await asyncio.gather(running, waiting)

    asyncio.run(main())
    scheduler.close()


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on() -> None:
    calls = []

    def flaky(items: list[Item]) -> np.ndarray:
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return np.zeros((len(items), 1))

    scheduler = make(flaky)

    async def main() -> None:
        with pytest.raises(EngineFailure, match="inference failed") as failure:
            await scheduler.submit([Item(0, 4)])
        assert "boom" not in str(failure.value)  # internal text stays in the log, not in the answer
        rows = await scheduler.submit([Item(1, 4), Item(2, 4)])
        assert rows.shape == (2, 1)

    asyncio.run(main())
    scheduler.close()


def test_a_bad_input_fails_only_its_own_request_when_batched_with_others() -> None:
    poison = 666

    def fragile(items: list[Item]) -> np.ndarray:
        if any(item.ident == poison for item in items):
            raise RuntimeError("cannot broadcast")
        return np.array([[item.ident] for item in items], dtype=np.float64)

    gate = threading.Event()
    scheduler = make(lambda items: (gate.wait(10), fragile(items))[1])

    async def main() -> list[np.ndarray | BaseException]:
        blocker = asyncio.ensure_future(scheduler.submit([Item(-1, 4)]))  # holds the worker while the rest queue
        await until(busy(scheduler))
        jobs = [scheduler.submit([Item(r * 10 + i, 4) for i in range(3)]) for r in range(4)]
        jobs.append(scheduler.submit([Item(poison, 4)]))
        gathered = asyncio.gather(*jobs, return_exceptions=True)
        gate.set()
        await blocker
        return await gathered

    results = asyncio.run(main())
    scheduler.close()
    assert isinstance(results[-1], EngineFailure)
    for r, rows in enumerate(results[:-1]):
        assert not isinstance(rows, BaseException)
        assert rows[:, 0].tolist() == [r * 10 + i for i in range(3)]


def test_an_error_outside_inference_does_not_end_the_worker() -> None:
    calls = []

    def observer(inputs: int, tokens: int, seconds: float) -> None:
        calls.append(inputs)
        if len(calls) == 1:
            raise RuntimeError("observer bug")

    scheduler = make(Recorder(), on_batch=observer)

    async def main() -> np.ndarray:
        with contextlib.suppress(EngineFailure):
            await asyncio.wait_for(scheduler.submit([Item(0, 4)]), timeout=10)
        return await asyncio.wait_for(scheduler.submit([Item(1, 4)]), timeout=10)

    assert asyncio.run(main())[:, 0].tolist() == [1]
    scheduler.close()


def test_close_finishes_accepted_work() -> None:
    scheduler = make(Recorder())

    async def main() -> np.ndarray:
        job = asyncio.ensure_future(scheduler.submit([Item(i, 30) for i in range(40)]))
        await asyncio.sleep(0)
        await asyncio.to_thread(scheduler.close)
        return await job

    assert asyncio.run(main()).shape == (40, 2)


def test_a_new_request_goes_ahead_of_partly_served_ones() -> None:
    """Least served first: a 2-input request arriving behind ten half-done large ones runs in the next window,
    not after a round of all ten."""
    steps = threading.Semaphore(0)
    ran: list[list[int]] = []

    def stepped(items: list[Item]) -> np.ndarray:
        assert steps.acquire(timeout=10)
        ran.append([item.ident for item in items])
        return np.array([[item.ident] for item in items], dtype=np.float64)

    scheduler = make(stepped)  # 256-token batches and shares: one 8-input batch per turn

    async def main() -> int:
        large = [asyncio.ensure_future(scheduler.submit([Item(r * 100 + i, 32) for i in range(40)])) for r in range(10)]
        await until(lambda: scheduler.stats().queued_pairs + scheduler.stats().inflight_pairs == 400)
        for _ in range(10):  # every large request has its first turn
            steps.release()
        await until(lambda: len(ran) >= 10)
        small = asyncio.ensure_future(scheduler.submit([Item(9001, 8), Item(9002, 8)]))
        await until(lambda: scheduler.stats().queued_pairs + scheduler.stats().inflight_pairs == 400 - 80 + 2)
        for _ in range(60):
            steps.release()
        await small
        await asyncio.gather(*large)
        return next(i for i, batch in enumerate(ran) if 9001 in batch)

    position = asyncio.run(main())
    scheduler.close()
    # After the batch the worker had already taken when it arrived: the next one.
    assert position <= 10 + 1, position
