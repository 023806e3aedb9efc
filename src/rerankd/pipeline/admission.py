"""Back-pressure in time: a request is admitted only while the wait it can expect is under `max_queue_seconds`.

Work is the cost model's estimate of each admitted request's model time, held from admission until the request
ends, so the check is one lock and a sum, made before any tokenizing, and a burst of simultaneous arrivals cannot
all slip in under a queue that has not grown yet.

The expected wait follows the scheduler. Under `fifo` it is all the work ahead. Under `fair` (least served first)
each waiting request takes turns with the new one, so until the new one is done each can take at most as much as
the new one needs: the wait is the sum over admitted requests of min(their work, the new request's work). So a
2-document request is still let in, and answered in a moment, when large ones fill the queue, while a large
request waits for the queue to drain below the limit (never for its own size: an idle model admits anything).

Estimates count inference only; what a request really waits also holds tokenizing, HTTP and whatever else the
machine runs. So admission learns, per model, how long answered requests took against their expected wait plus
their own estimate, and scales by that ratio: the limit is on the wait clients see. A client turned away gets 429
and a `Retry-After` of the time until its wait would be under the limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rerankd.errors import Overloaded

# Weight of the newest answered request in the learned ratio: waits longer than expected count more than shorter
# ones, so the ratio errs on the side of the limit.
_SMOOTHING_UP, _SMOOTHING_DOWN = 0.5, 0.1
_RATIO_RANGE = (0.5, 4.0)
_MIN_LEARN_SECONDS = 0.2  # shorter requests say more about overheads than about the queue


class Admission:
    """Admitted requests' work per model, in estimated seconds, and how real waits compare to it. Thread-safe."""

    def __init__(self, max_queue_seconds: float, *, fair: bool = True) -> None:
        self.max_queue_seconds = max_queue_seconds  # 0 = no limit
        self.fair = fair
        self._work: dict[str, list[float]] = {}
        self._ratio: dict[str, float] = {}
        self._lock = threading.Lock()

    def queued_seconds(self, model: str) -> float:
        """All admitted work of `model`, as real seconds: what a large new request would wait."""
        with self._lock:
            return sum(self._work.get(model, ())) * self._ratio.get(model, 1.0)

    def overloaded(self) -> bool:
        """Whether any model's queue is past the limit (readiness turns 503, so load balancers steer away)."""
        limit = self.max_queue_seconds
        with self._lock:
            return bool(limit) and any(sum(w) * self._ratio.get(m, 1.0) >= limit for m, w in self._work.items())

    def _wait(self, model: str, seconds: float) -> float:
        ahead = self._work.get(model, ())
        work = sum(min(other, seconds) for other in ahead) if self.fair else sum(ahead)
        return work * self._ratio.get(model, 1.0)

    @contextmanager
    def admit(self, model: str, seconds: float) -> Iterator[None]:
        """Hold `seconds` of work for `model` while the block runs; raise `Overloaded` when the request's expected
        wait is at or over the limit."""
        limit = self.max_queue_seconds
        with self._lock:
            wait = self._wait(model, seconds)
            if limit and wait >= limit:
                raise Overloaded(
                    f"{model}: expected wait {wait:.1f} s for the work already queued, at or over "
                    f"max_queue_seconds={limit:g}",
                    retry_after=max(1.0, wait - limit + 1.0),
                )
            self._work.setdefault(model, []).append(seconds)
            expected = wait / self._ratio.get(model, 1.0) + seconds
        started = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._work[model].remove(seconds)
        # Only answered requests teach the ratio (an error may end a request early).
        waited = time.monotonic() - started
        if waited >= _MIN_LEARN_SECONDS and expected > 0:
            with self._lock:
                low, high = _RATIO_RANGE
                current, observed = self._ratio.get(model, 1.0), waited / expected
                weight = _SMOOTHING_UP if observed > current else _SMOOTHING_DOWN
                self._ratio[model] = min(max((1 - weight) * current + weight * observed, low), high)
