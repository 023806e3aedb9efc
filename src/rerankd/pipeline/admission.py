"""Back-pressure in time: a request is admitted only while the work already admitted to its model takes less than
`max_queue_seconds`.

Work is the cost model's estimate of each admitted request's model time, held from admission until the request
ends, so the check is one lock and a sum, made before any tokenizing, and a burst of simultaneous arrivals cannot
all slip in under a queue that has not grown yet. A request is judged by the work ahead of it, not its own size,
so a large request is not starved by a stream of small ones; what a client waits is then at most the limit plus
its own share. A client turned away gets 429 and a `Retry-After` of the time until the queue is back under the
limit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rerankd.errors import Overloaded


class Admission:
    """Admitted work per model, in estimated seconds. Thread-safe."""

    def __init__(self, max_queue_seconds: float) -> None:
        self.max_queue_seconds = max_queue_seconds  # 0 = no limit
        self._seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def queued_seconds(self, model: str) -> float:
        with self._lock:
            return self._seconds.get(model, 0.0)

    def overloaded(self) -> bool:
        """Whether any model is past its limit (readiness turns 503, so load balancers steer away)."""
        with self._lock:
            return bool(self.max_queue_seconds) and any(s > self.max_queue_seconds for s in self._seconds.values())

    @contextmanager
    def admit(self, model: str, seconds: float) -> Iterator[None]:
        """Hold `seconds` of work for `model` while the block runs; raise `Overloaded` when over the limit."""
        with self._lock:
            queued = self._seconds.get(model, 0.0)
            limit = self.max_queue_seconds
            if limit and queued >= limit:
                raise Overloaded(
                    f"{model}: {queued:.1f} s of work already queued, at or over max_queue_seconds={limit:g}",
                    retry_after=max(1.0, queued - limit + 1.0),
                )
            self._seconds[model] = queued + seconds
        try:
            yield
        finally:
            with self._lock:
                self._seconds[model] = max(0.0, self._seconds[model] - seconds)
