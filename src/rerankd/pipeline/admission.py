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

A cascade's work lies on two queues: its first model scores every document, then its own model scores K. Each
part is a `Stage`, judged against and held on its own model's queue; the first stage's hold ends when the first
model has answered, and its time teaches that model's ratio. `request_stages` estimates them from the request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from rerankd.engine.engine import Engine
from rerankd.errors import Overloaded
from rerankd.pipeline.costs import CostModel
from rerankd.pipeline.run.options import Options
from rerankd.pipeline.run.score import rough_rule

# Weight of the newest answered request in the learned ratio: waits longer than expected count more than shorter
# ones, so the ratio errs on the side of the limit.
_SMOOTHING_UP, _SMOOTHING_DOWN = 0.5, 0.1
_RATIO_RANGE = (0.5, 4.0)
_MIN_LEARN_SECONDS = 0.2  # shorter requests say more about overheads than about the queue


@dataclass(frozen=True)
class Stage:
    """One model's part of a request's work, in estimated seconds: a cascade holds its first model's, then its
    own. `field` names the request field that chose a model other than the request's, for a refusal's message."""

    model: str
    seconds: float
    field: str = ""

    @property
    def label(self) -> str:
        return f"{self.field} {self.model}" if self.field else self.model


def request_stages(
    costs: CostModel, engine: Engine, query: str, documents: Sequence[str], options: Options
) -> list[Stage]:
    """The request's model work per queue, estimated before any tokenizing: a cascade's first model over every
    document (when it will run), then `engine` over at most K of them."""
    scored = min(options.most_scored or len(documents), len(documents))
    head = options.rescoring  # int8-rescore's head: more work
    seconds = costs.work_seconds(engine, query, documents, chunks=rough_rule(engine, options), scored=scored, head=head)
    own = Stage(engine.spec.name, seconds)
    first = options.first_stage_model if options.first_stage_scores is None else None
    cuts = options.strategy in ("hybrid", "auto") and scored < len(documents)  # else the plan runs direct
    if first is None or not (cuts or options.fusion != "none"):
        return [own]
    work = costs.work_seconds(first, query, documents, chunks=None, scored=len(documents))
    return [Stage(first.spec.name, work, "first_stage_model"), own]


class Ticket:
    """An admitted request's hold. Its stages run one after another; `stage_done(i)` releases stage i's work as
    soon as it ends (a cascade's first model is free long before the request ends) and learns from its time."""

    def __init__(self, admission: Admission, stages: Sequence[Stage], expected: Sequence[float]) -> None:
        self._admission, self._stages = admission, stages
        self._expected = expected  # per stage, estimated seconds from admission: its queue's wait and its work
        self._held = [True] * len(stages)
        self._done = [False] * len(stages)
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def stage_done(self, index: int) -> None:
        """Stage `index` ended: its model's queue no longer holds it, and its time since admission teaches that
        model's ratio (expected: the stages that ran before it, then its own wait and work)."""
        if not self._release(index):
            return
        with self._lock:
            self._done[index] = True
            expected = sum(e for e, done in zip(self._expected[:index], self._done, strict=False) if done)
        expected += self._expected[index]
        self._admission._learn(self._stages[index].model, time.monotonic() - self._started, expected)

    def _release(self, index: int) -> bool:
        """Release stage `index`'s work; False when it was released already."""
        with self._lock:
            held, self._held[index] = self._held[index], False
        if held:
            self._admission._release(self._stages[index])
        return held


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

    @contextmanager
    def admit(self, *stages: Stage) -> Iterator[Ticket]:
        """Hold each stage's work on its model's queue while the block runs (or until the stage is marked done);
        raise `Overloaded`, holding nothing, when any stage's expected wait is at or over the limit. The last
        stage is the request's own model: it learns from the whole request's time when the request is answered."""
        limit = self.max_queue_seconds
        with self._lock:
            waits = [self._wait(stage.model, stage.seconds) for stage in stages]
            for stage, wait in zip(stages, waits, strict=True):
                if limit and wait >= limit:
                    raise Overloaded(
                        f"{stage.label}: expected wait {wait:.1f} s for the work already queued, at "
                        f"or over max_queue_seconds={limit:g}",
                        retry_after=max(1.0, max(waits) - limit + 1.0),
                    )
            for stage in stages:
                self._work.setdefault(stage.model, []).append(stage.seconds)
            expected = [wait / self._ratio.get(s.model, 1.0) + s.seconds for s, wait in zip(stages, waits, strict=True)]
        ticket = Ticket(self, stages, expected)
        answered = False
        try:
            yield ticket
            answered = True
        finally:
            # A stage never marked done (a cascade whose plan went direct) is released without teaching anything;
            # only answered requests teach (an error may end a request early).
            for index in range(len(stages) - 1):
                ticket._release(index)
            if answered:
                ticket.stage_done(len(stages) - 1)
            else:
                ticket._release(len(stages) - 1)

    def _wait(self, model: str, seconds: float) -> float:
        ahead = self._work.get(model, ())
        work = sum(min(other, seconds) for other in ahead) if self.fair else sum(ahead)
        return work * self._ratio.get(model, 1.0)

    def _release(self, stage: Stage) -> None:
        with self._lock:
            self._work[stage.model].remove(stage.seconds)

    def _learn(self, model: str, waited: float, expected: float) -> None:
        """Move `model`'s ratio of real to estimated time towards what one answered stage took."""
        if waited < _MIN_LEARN_SECONDS or expected <= 0:
            return
        with self._lock:
            low, high = _RATIO_RANGE
            current, observed = self._ratio.get(model, 1.0), waited / expected
            weight = _SMOOTHING_UP if observed > current else _SMOOTHING_DOWN
            self._ratio[model] = min(max((1 - weight) * current + weight * observed, low), high)
