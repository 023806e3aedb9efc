"""The batching queue of one model.

Requests submit their tokenized inputs from the event loop; a worker thread takes a window of queued inputs
(several requests' worth), sorts it by length so padding is small, cuts it into batches whose padded size stays
within `max_batch_tokens`, runs them, and hands each request its rows when all are done. A backend that runs
several batches at once (OpenVINO: a stream per core) gets as many workers, each taking its own windows.

Which inputs make a window: `fair` (the default) gives each waiting request turns of up to one batch's worth of
tokens. A request that has not had a turn yet goes first (the one with the least left first), so a new request's
first turn comes right after the batch in flight, whatever waits: a 2-document request arriving behind ten
50-document ones, or a 1,000-document one, is done after one batch. Requests that have had a turn then share the
model round-robin (least recently served first), so each newcomer delays them by one turn at most, not by all of
its work.
`fifo` takes inputs strictly in arrival order.
The event loop never waits on inference. Inputs of a request that was cancelled (its client went away) are
dropped from the queue. The scheduler knows nothing of HTTP or of models: it runs a `run_batch` callable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from rerankd.engine.queue_stats import QueueStats
from rerankd.errors import EngineFailure, NotReady, Overloaded

log = logging.getLogger(__name__)

# A fifo window holds this many batches' worth of tokens, enough to sort several requests' inputs well. A fair
# window is one batch's worth (each request's inputs are sorted when queued), so a new arrival waits at most the
# batch in flight.
WINDOW_BATCHES = 4


class SizedInput(Protocol):
    def __len__(self) -> int: ...


T = TypeVar("T", bound=SizedInput)


def pack_batches(items: Sequence[T], max_batch_tokens: int, max_batch_size: int) -> list[list[T]]:
    """Length-sorted batches whose padded size (inputs x longest input) fits `max_batch_tokens`."""
    batches: list[list[T]] = []
    current: list[T] = []
    for item in sorted(items, key=len):
        too_many_tokens = (len(current) + 1) * len(item) > max_batch_tokens
        if current and (too_many_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(item)
    if current:
        batches.append(current)
    return batches


BatchObserver = Callable[[int, int, float], None]  # (inputs, padded tokens, seconds)


class _Job:
    """One submitted request: its rows arrive from the worker thread, the result goes back to its event loop."""

    __slots__ = ("cancelled", "future", "loop", "remaining", "results")

    def __init__(self, size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[np.ndarray] = loop.create_future()
        self.remaining = size
        self.results: np.ndarray | None = None
        self.cancelled = False

    def put(self, index: int, row: np.ndarray, total: int) -> None:
        if self.results is None:
            self.results = np.empty((total, *row.shape), dtype=row.dtype)
        self.results[index] = row
        self.remaining -= 1
        if self.remaining == 0:
            self._settle(self.future.set_result, self.results)

    def fail(self, error: BaseException) -> None:
        self.cancelled = True
        self._settle(self.future.set_exception, error)

    def _settle(self, setter: Callable[..., None], value: object) -> None:
        def apply() -> None:
            if not self.future.done():
                setter(value)

        with contextlib.suppress(RuntimeError):  # the caller's loop is gone; nobody is waiting
            self.loop.call_soon_threadsafe(apply)


@dataclass(slots=True)
class _Entry:
    job: _Job
    index: int
    total: int
    item: SizedInput

    def __len__(self) -> int:
        return len(self.item)


@dataclass(slots=True)
class _Waiting:
    """A request's inputs not yet taken into a window, and how many of its tokens were taken so far."""

    job: _Job
    entries: deque[_Entry]
    left: int = 0  # tokens still waiting
    last_turn: int = 0  # when it last had a turn (0 = never)


class Scheduler:
    """Token-budget, length-sorted batching across concurrent requests for one model."""

    def __init__(
        self,
        run_batch: Callable[[list], np.ndarray],
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_queued_pairs: int,
        fair: bool = True,
        name: str = "model",
        on_batch: BatchObserver | None = None,
        workers: int = 1,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_queued_pairs = max_queued_pairs
        self.fair = fair
        self.name = name
        self._on_batch = on_batch
        self._queue: deque[_Waiting] = deque()  # requests in turn order
        self._cond = threading.Condition()
        self._queued_pairs = 0
        self._queued_tokens = 0
        self._inflight_pairs = 0
        self._inflight_tokens = 0
        self._batches_done = 0
        self._last_progress = time.monotonic()
        self._tokens_per_second = 0.0
        self._busy_seconds = 0.0
        self._closing = False
        self._turns = 0
        self._workers = [
            threading.Thread(target=self._work, name=f"rerankd-batcher-{name}-{n}", daemon=True) for n in range(workers)
        ]
        for worker in self._workers:
            worker.start()

    async def submit(self, items: Sequence[SizedInput]) -> np.ndarray:
        """Queue `items` and return their output rows, in order. Raises `Overloaded` when the queue is full."""
        if not items:
            raise ValueError("submit needs at least one input")
        job = _Job(len(items), asyncio.get_running_loop())
        with self._cond:
            if self._closing:
                raise NotReady("the model is shutting down", retry_after=1)
            if self._queued_pairs and self._queued_pairs + len(items) > self.max_queued_pairs:
                raise Overloaded(
                    f"queue full: {self._queued_pairs} pairs waiting, limit max_queued_pairs={self.max_queued_pairs}",
                    retry_after=max(1.0, math.ceil(self._queued_tokens / (self._tokens_per_second or 1000.0))),
                )
            if not (self._queued_pairs or self._inflight_pairs):
                self._last_progress = time.monotonic()  # the stall clock starts when work arrives
            # Shortest first: a request's turns then come as runs of similar lengths, so its batches barely pad
            # even when it spans many windows (a window sorts only what it holds).
            order = sorted(range(len(items)), key=lambda i: len(items[i]))
            entries = deque(_Entry(job, i, len(items), items[i]) for i in order)
            tokens = sum(len(item) for item in items)
            self._queue.append(_Waiting(job, entries, left=tokens))
            self._queued_pairs += len(items)
            self._queued_tokens += tokens
            self._cond.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            self._drop(job)
            raise

    @property
    def workers(self) -> int:
        """Batches run side by side (each worker runs one at a time)."""
        return len(self._workers)

    def set_max_batch_tokens(self, value: int) -> None:
        """Change the token budget (the start-up tuning picks it after the sweep); windows taken later use it."""
        if value < 1:
            raise ValueError(f"max_batch_tokens must be positive, not {value}")
        with self._cond:
            self.max_batch_tokens = value

    def stats(self) -> QueueStats:
        with self._cond:
            busy = self._queued_pairs or self._inflight_pairs
            return QueueStats(
                queued_pairs=self._queued_pairs,
                queued_tokens=self._queued_tokens,
                inflight_pairs=self._inflight_pairs,
                inflight_tokens=self._inflight_tokens,
                batches_done=self._batches_done,
                stalled_seconds=time.monotonic() - self._last_progress if busy else 0.0,
                tokens_per_second=self._tokens_per_second,
                busy_seconds=self._busy_seconds,
            )

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking work, finish what was accepted, and stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    # -- worker thread -------------------------------------------------------------------------------------------

    def _drop(self, job: _Job) -> None:
        """Forget a cancelled request's waiting inputs so they cost nothing."""
        with self._cond:
            job.cancelled = True
            for waiting in [w for w in self._queue if w.job is job]:
                self._queued_tokens -= sum(len(entry) for entry in waiting.entries)
                self._queued_pairs -= len(waiting.entries)
                self._queue.remove(waiting)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                window = self._take_window()
                if self._queue:
                    self._cond.notify()  # work is left: another worker may take the next window meanwhile
            try:
                for batch in self.batches(window):
                    self._run(batch)
            except Exception:  # a bug here must neither end the worker nor strand the window's requests
                log.exception("scheduler %s: unexpected error; failing the window's requests", self.name)
                for job in _jobs(window):
                    job.fail(EngineFailure("internal error in the batching queue"))

    def _take_window(self) -> list[_Entry]:
        """`fair`: one batch's worth of inputs, from the waiting requests in turn (first turns first; small requests
        share it), so the next arrival's turn comes after the batch in flight. `fifo`: up to WINDOW_BATCHES
        batches' worth, in arrival order."""
        if self.fair and len(self._queue) > 1:
            # First turns first (least left first), then round-robin by last turn; stable: arrival order.
            self._queue = deque(sorted(self._queue, key=_turn_order))
        window: list[_Entry] = []
        budget = self.max_batch_tokens if self.fair else WINDOW_BATCHES * self.max_batch_tokens
        turns = len(self._queue) if len(self._queue) > 1 else math.inf  # one round, when several requests wait
        longest = 0
        while self._queue and budget > 0 and turns > 0:
            turns -= 1
            waiting = self._queue[0]
            share = self.max_batch_tokens if self.fair else math.inf
            share_taken = False
            while waiting.entries and budget > 0 and share > 0:
                entry = waiting.entries[0]
                # A fair window is one batch: stop at the first input that would not fit in it padded. (Counting
                # unpadded tokens overshot the budget, so nearly every window packed into a full batch and a
                # one-input batch: 72 of 165 batches for one 1,000-document request.)
                if self.fair and window and not self._fits(len(window) + 1, max(longest, len(entry))):
                    budget = 0
                    break
                share_taken = True
                waiting.entries.popleft()
                window.append(entry)
                longest = max(longest, len(entry))
                budget -= len(entry)
                share -= len(entry)
                waiting.left -= len(entry)
            if not share_taken:
                break  # the batch was full before this request's turn: its turn is the next window's
            self._turns += 1
            waiting.last_turn = self._turns
            if not waiting.entries:
                self._queue.popleft()
            elif share <= 0:
                self._queue.rotate(-1)
        return window

    def _fits(self, count: int, longest: int) -> bool:
        return count <= self.max_batch_size and count * longest <= self.max_batch_tokens

    def _run_isolated(self, live: list[_Entry]) -> None:
        """Run a batch; if it fails and holds several requests, run each request's rows on their own, so one bad
        input fails only its own request."""
        try:
            rows = self._run_batch([entry.item for entry in live])
        except Exception as exc:
            jobs = _jobs(live)
            if len(jobs) > 1:
                for job in jobs:
                    self._run_isolated([entry for entry in live if entry.job is job])
                return
            log.error("scheduler %s: inference failed: %s: %s", self.name, type(exc).__name__, exc)
            jobs[0].fail(EngineFailure("inference failed for this request's inputs"))
            return
        for entry, row in zip(live, rows, strict=True):
            if not entry.job.cancelled:
                entry.job.put(entry.index, row, entry.total)

    def batches(self, items: Sequence[T]) -> list[list[T]]:
        """How this queue cuts `items` into batches (length-sorted, each within its token and size budget)."""
        return pack_batches(items, self.max_batch_tokens, self.max_batch_size)

    def _run(self, batch: list[_Entry]) -> None:
        with self._cond:
            live = [entry for entry in batch if not entry.job.cancelled]
            self._queued_pairs -= len(batch)
            self._queued_tokens -= sum(len(entry) for entry in batch)
            if not live:
                return
            padded = len(live) * max(len(entry) for entry in live)
            self._inflight_pairs += len(live)
            self._inflight_tokens += padded
        started = time.perf_counter()
        self._run_isolated(live)
        elapsed = time.perf_counter() - started
        # With several workers a batch's own time overstates the model's: they run side by side, so the queue's
        # speed and busy time count each batch's share of the cores.
        share = elapsed / self.workers
        with self._cond:
            self._inflight_pairs -= len(live)
            self._inflight_tokens -= padded
            self._batches_done += 1
            self._busy_seconds += share
            self._last_progress = time.monotonic()
            rate = padded / max(share, 1e-6)
            self._tokens_per_second = (
                rate if not self._tokens_per_second else 0.8 * self._tokens_per_second + 0.2 * rate
            )
        if self._on_batch is not None:
            self._on_batch(len(live), padded, elapsed)


def _jobs(entries: Sequence[_Entry]) -> list[_Job]:
    """The distinct requests of `entries`, in order of first appearance."""
    return list({id(entry.job): entry.job for entry in entries}.values())


def _turn_order(waiting: _Waiting) -> tuple[int, int]:
    return (0, waiting.left) if waiting.last_turn == 0 else (1, waiting.last_turn)
