"""Back-pressure in time: a request is admitted only while the work already admitted to its model takes less than
`max_queue_seconds`.

Work is the cost model's estimate of each admitted request's model time, held from admission until the request
ends, so the check is one lock and a sum, made before any tokenizing, and a burst of simultaneous arrivals cannot
all slip in under a queue that has not grown yet. A request is judged by the work ahead of it, not its own size,
so a large request is not starved by a stream of small ones.

Estimates count inference only; what a request really waits also holds tokenizing, HTTP and whatever else the
machine runs. So admission learns, per model, how long answered requests took against what was ahead of them plus
their own estimate, and scales the queue by that ratio: the limit is then on the wait clients see. A client turned
away gets 429 and a `Retry-After` of the time until the queue is back under the limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rerankd.errors import Overloaded

_SMOOTHING = 0.2  # weight of the newest answered request in the learned ratio
_RATIO_RANGE = (0.5, 4.0)
_MIN_LEARN_SECONDS = 0.2  # shorter requests say more about overheads than about the queue


class Admission:
    """Admitted work per model, in estimated seconds, and how real waits compare to it. Thread-safe."""

    def __init__(self, max_queue_seconds: float) -> None:
        self.max_queue_seconds = max_queue_seconds  # 0 = no limit
        self._seconds: dict[str, float] = {}
        self._ratio: dict[str, float] = {}
        self._lock = threading.Lock()

    def queued_seconds(self, model: str) -> float:
        """The expected wait ahead of a new request for `model`."""
        with self._lock:
            return self._seconds.get(model, 0.0) * self._ratio.get(model, 1.0)

    def overloaded(self) -> bool:
        """Whether any model is past its limit (readiness turns 503, so load balancers steer away)."""
        limit = self.max_queue_seconds
        with self._lock:
            return bool(limit) and any(s * self._ratio.get(m, 1.0) >= limit for m, s in self._seconds.items())

    @contextmanager
    def admit(self, model: str, seconds: float) -> Iterator[None]:
        """Hold `seconds` of work for `model` while the block runs; raise `Overloaded` when over the limit."""
        limit = self.max_queue_seconds
        with self._lock:
            ahead = self._seconds.get(model, 0.0)
            ratio = self._ratio.get(model, 1.0)
            if limit and ahead * ratio >= limit:
                raise Overloaded(
                    f"{model}: {ahead * ratio:.1f} s of work already queued, at or over max_queue_seconds={limit:g}",
                    retry_after=max(1.0, ahead * ratio - limit + 1.0),
                )
            self._seconds[model] = ahead + seconds
        started = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._seconds[model] = max(0.0, self._seconds[model] - seconds)
        # Only answered requests teach the ratio (an error may end a request early).
        waited, expected = time.monotonic() - started, ahead + seconds
        if waited >= _MIN_LEARN_SECONDS and expected > 0:
            with self._lock:
                low, high = _RATIO_RANGE
                learned = (1 - _SMOOTHING) * self._ratio.get(model, 1.0) + _SMOOTHING * waited / expected
                self._ratio[model] = min(max(learned, low), high)
