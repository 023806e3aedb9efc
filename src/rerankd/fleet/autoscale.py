"""The autoscaling policy: how many model replicas the load calls for.

Model replicas take 30-60 s to start, so the fleet keeps headroom (target utilisation ~65%), adds capacity quickly
when work piles up, and gives it back slowly, one replica at a time after a quiet period; docs/fleet.md
(Autoscaling) states the rules. `decide` is a pure function of (config, state, signals, now), shared by the Ray
Serve hook (`RayAutoscalePolicy`) and the discrete-event simulator in bench/.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from rerankd.vocabulary import AUTOSCALE

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

    from rerankd.config import Settings

log = logging.getLogger("ray.serve")  # runs in the Serve controller: log where its logs go


@dataclass(frozen=True)
class AutoscaleConfig:
    """Every knob; the defaults are `vocabulary.AutoscaleDefaults` (what each means), and each is also a setting
    (`autoscale_<name>`, see docs/fleet.md)."""

    min_replicas: int = 1
    max_replicas: int = 4
    target_utilisation: float = AUTOSCALE.target_utilisation
    downscale_utilisation: float = AUTOSCALE.downscale_utilisation
    target_queued_tokens: float = AUTOSCALE.target_queued_tokens
    target_p99_ms: float = AUTOSCALE.target_p99_ms
    upscale_seconds: float = AUTOSCALE.upscale_seconds
    downscale_seconds: float = AUTOSCALE.downscale_seconds
    downscale_step_seconds: float = AUTOSCALE.downscale_step_seconds

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"autoscale: need 1 <= min <= max replicas, got {self.min_replicas}:{self.max_replicas}")
        if not 0 < self.downscale_utilisation < self.target_utilisation <= 1:
            raise ValueError(
                "autoscale: need 0 < autoscale_downscale_utilisation < autoscale_target_utilisation <= 1, got "
                f"{self.downscale_utilisation} and {self.target_utilisation}"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> AutoscaleConfig:
        low, high = parse_autoscale(settings.autoscale)
        bounds = ("min_replicas", "max_replicas")
        knobs = {f.name: getattr(settings, f"autoscale_{f.name}") for f in fields(cls) if f.name not in bounds}
        return cls(min_replicas=low, max_replicas=high, **knobs)


def parse_autoscale(text: str) -> tuple[int, int]:
    """`"2:8"` -> (2, 8)."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"autoscale: expected min:max replicas such as 1:4, got {text!r}")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class Signals:
    """What the replicas report, over the last few seconds."""

    running: int  # replicas serving now
    target: int  # replicas asked for (running + starting)
    utilisation: float  # mean busy fraction of the running replicas, 0-1
    queued_tokens: float  # tokens waiting, summed over replicas
    p99_ms: float  # the worst replica's p99 latency


@dataclass(frozen=True)
class PolicyState:
    over_since: float | None = None  # when the load first needed more replicas than the target, without a break
    quiet_since: float | None = None  # when the fleet last became over-provisioned, without a break
    last_up: float | None = None  # time of the last scale-up
    last_down: float | None = None  # time of the last scale-down


@dataclass(frozen=True)
class Decision:
    replicas: int
    state: PolicyState
    reason: str  # "" when nothing changes


def needed_replicas(config: AutoscaleConfig, signals: Signals) -> int:
    """Replicas the current load calls for, by the strongest of the three signals."""
    running = max(signals.running, 1)
    busy = signals.utilisation * running
    need = math.ceil(busy / config.target_utilisation - 1e-9)
    if signals.queued_tokens > config.target_queued_tokens * running:
        # At most double per decision: the backlog keeps growing while new replicas load, and sizing the fleet to
        # drain all of it at once would overshoot far once they are up.
        need = max(need, min(2 * running, math.ceil(signals.queued_tokens / config.target_queued_tokens)))
    # Latency alone can be one huge request on an idle replica, which more replicas would not help.
    if signals.p99_ms > config.target_p99_ms and signals.utilisation > config.downscale_utilisation:
        need = max(need, running + 1)
    return need


def _quiet(config: AutoscaleConfig, signals: Signals) -> bool:
    """Could the fleet lose a replica and stay comfortably under target?"""
    if signals.target <= config.min_replicas:
        return False
    remaining_utilisation = signals.utilisation * max(signals.running, 1) / (signals.target - 1)
    return (
        remaining_utilisation <= config.downscale_utilisation
        and signals.queued_tokens <= config.target_queued_tokens * (signals.target - 1) / 2
        and signals.p99_ms <= config.target_p99_ms
    )


def decide(config: AutoscaleConfig, state: PolicyState, signals: Signals, now: float) -> Decision:
    """The replica count to ask for now, and the policy's new state."""
    target = signals.target
    if target < config.min_replicas or target > config.max_replicas:
        bounded = min(max(target, config.min_replicas), config.max_replicas)
        return Decision(bounded, state, f"bounds {config.min_replicas}:{config.max_replicas}")

    need = min(needed_replicas(config, signals), config.max_replicas)
    if need > target:
        over_since = state.over_since if state.over_since is not None else now
        if now - over_since >= config.upscale_seconds:
            reason = (
                f"up {target}->{need}: utilisation {signals.utilisation:.2f}, queued {signals.queued_tokens:.0f} "
                f"tokens, p99 {signals.p99_ms:.0f} ms"
            )
            return Decision(need, PolicyState(last_up=now, last_down=state.last_down), reason)
        return Decision(target, replace(state, over_since=over_since, quiet_since=None), "")

    if _quiet(config, signals):
        quiet_since = state.quiet_since if state.quiet_since is not None else now
        settled = state.last_up is None or now - state.last_up >= config.downscale_seconds
        stepped = state.last_down is None or now - state.last_down >= config.downscale_step_seconds
        if now - quiet_since >= config.downscale_seconds and settled and stepped:
            quiet = now - quiet_since
            reason = f"down {target}->{target - 1}: utilisation {signals.utilisation:.2f}, quiet {quiet:.0f}s"
            return Decision(target - 1, replace(state, over_since=None, quiet_since=quiet_since, last_down=now), reason)
        return Decision(target, replace(state, over_since=None, quiet_since=quiet_since), "")
    return Decision(target, replace(state, over_since=None, quiet_since=None), "")


def signals_from_context(ctx: AutoscalingContext) -> Signals:
    """Ray's view (per-replica averages of `record_autoscaling_stats` over the look-back window) as `Signals`."""
    metrics = ctx.aggregated_metrics or {}
    busy = list(metrics.get("busy", {}).values())
    return Signals(
        running=ctx.current_num_replicas,
        target=ctx.target_num_replicas,
        utilisation=min(1.0, sum(busy) / len(busy)) if busy else 0.0,
        queued_tokens=float(sum(metrics.get("queued_tokens", {}).values())),
        p99_ms=float(max(metrics.get("p99_ms", {}).values(), default=0.0)),
    )


class RayAutoscalePolicy:
    """Ray Serve's autoscaling-policy hook (`AutoscalingPolicy(policy_function=RayAutoscalePolicy, policy_kwargs=
    asdict(config))`). Ray builds it once per deployment and calls it every control-loop tick; its own delays and
    scaling factors are set to neutral so that `decide` alone rules."""

    def __init__(self, **config: Any) -> None:
        self.config = AutoscaleConfig(**config)
        self.state = PolicyState()

    def __call__(self, ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
        now = ctx.current_time or time.time()
        decision = decide(self.config, self.state, signals_from_context(ctx), now)
        self.state = decision.state
        if decision.reason:
            log.info("rerankd autoscale %s", decision.reason)
        return decision.replicas, {}
