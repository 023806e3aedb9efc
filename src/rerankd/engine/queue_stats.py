"""What a model's queue holds now (`QueueStats`) and the one rule that calls an engine stuck (`stall_problem`).

Pure data and a pure rule, apart from the scheduler that fills them: routing, autoscaling, /health and the fleet's
health checks read these without loading the engine (or anything of the model stack).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class QueueStats:
    """What a queue holds now: the signals for routing, autoscaling and health. One engine's, or a fleet replica's
    summed over its models (`merged`)."""

    queued_pairs: int = 0
    queued_tokens: int = 0
    inflight_pairs: int = 0
    inflight_tokens: int = 0
    batches_done: int = 0
    stalled_seconds: float = 0.0  # since the last finished batch while work is waiting (the worst); 0 when idle
    tokens_per_second: float = 0.0  # recent padded tokens per second of inference (moving average); 0 before any
    busy_seconds: float = 0.0  # inference time so far, all batches together

    @classmethod
    def merged(cls, stats: Sequence[QueueStats]) -> QueueStats:
        """Several queues as one: sums, and the worst stall."""
        sums = {field.name: sum(getattr(s, field.name) for s in stats) for field in fields(cls)}
        return cls(**sums | {"stalled_seconds": max((s.stalled_seconds for s in stats), default=0.0)})


def stall_problem(queued_pairs: int, stalled_seconds: float, limit_seconds: float) -> str | None:
    """Why an engine should be restarted, or None: stuck when work waits and no batch finished for too long.
    The one rule for single-process /health and for fleet replicas' health checks."""
    if stalled_seconds <= limit_seconds:
        return None
    return (
        f"engine stuck: {queued_pairs} pairs queued and no batch finished for "
        f"{stalled_seconds:.0f}s (replica_stall_seconds={limit_seconds:g})"
    )
