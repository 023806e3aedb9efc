"""The autoscaling policy as a pure function of (config, state, signals, time): no Ray running."""

from __future__ import annotations

import itertools

import pytest

from rerankd.config import Settings
from rerankd.fleet.autoscale import (
    AutoscaleConfig,
    PolicyState,
    Signals,
    decide,
    needed_replicas,
    parse_autoscale,
)

CONFIG = AutoscaleConfig(min_replicas=1, max_replicas=10, upscale_seconds=10, downscale_seconds=300)


class Fleet:
    """Replays the policy once a second; replicas it adds start `cold_start` seconds later."""

    def __init__(self, config: AutoscaleConfig, replicas: int, cold_start: float = 0.0) -> None:
        self.config = config
        self.state = PolicyState()
        self.target = replicas
        self.starting: list[float] = []  # ready times of replicas still starting
        self.running = replicas
        self.cold_start = cold_start
        self.events: list[tuple[float, int]] = []

    def tick(self, now: float, busy_replicas: float, queued_tokens: float = 0.0, p99_ms: float = 0.0) -> None:
        self.running += sum(1 for t in self.starting if t <= now)
        self.starting = [t for t in self.starting if t > now]
        utilisation = min(1.0, busy_replicas / self.running)
        signals = Signals(self.running, self.target, utilisation, queued_tokens, p99_ms)
        decision = decide(self.config, self.state, signals, now)
        self.state = decision.state
        if decision.replicas > self.target:
            self.starting += [now + self.cold_start] * (decision.replicas - self.target)
        elif decision.replicas < self.target:
            self.running -= self.target - decision.replicas
        if decision.replicas != self.target:
            self.events.append((now, decision.replicas))
        self.target = decision.replicas


def test_needed_replicas_keeps_headroom() -> None:
    # 2 busy replicas' worth of work at a 65% target needs 4 replicas (2 / 0.65 = 3.08).
    assert needed_replicas(CONFIG, Signals(2, 2, 1.0, 0, 0)) == 4
    assert needed_replicas(CONFIG, Signals(4, 4, 0.65, 0, 0)) == 4
    assert needed_replicas(CONFIG, Signals(4, 4, 0.66, 0, 0)) == 5


def test_queued_tokens_and_p99_each_call_for_more_replicas() -> None:
    queue = needed_replicas(CONFIG, Signals(3, 3, 0.6, 5 * CONFIG.target_queued_tokens, 0))
    assert queue == 5
    # A huge backlog at most doubles the fleet per decision (it keeps growing while replicas load).
    assert needed_replicas(CONFIG, Signals(3, 3, 1.0, 100 * CONFIG.target_queued_tokens, 0)) == 6
    slow = needed_replicas(CONFIG, Signals(2, 2, 0.6, 0, 2 * CONFIG.target_p99_ms))
    assert slow == 3
    # A slow p99 on an idle fleet (one huge request) is no reason to add replicas.
    assert needed_replicas(CONFIG, Signals(2, 2, 0.1, 0, 10 * CONFIG.target_p99_ms)) == 1


def test_a_burst_scales_up_within_the_configured_delay_and_jumps_to_the_need() -> None:
    fleet = Fleet(CONFIG, replicas=2, cold_start=45)
    for now in range(30):
        fleet.tick(now, busy_replicas=0.5 if now < 5 else 6.0)
    first_up = fleet.events[0]
    assert 5 + CONFIG.upscale_seconds - 1 <= first_up[0] <= 5 + CONFIG.upscale_seconds
    assert first_up[1] == 4  # all it could see of the need: 2 saturated replicas / 0.65
    # Starting replicas count toward the target: no second event while they start, however busy.
    assert len(fleet.events) == 1


def test_short_spikes_shorter_than_the_delay_do_not_scale() -> None:
    fleet = Fleet(CONFIG, replicas=2)
    for now in range(200):
        fleet.tick(now, busy_replicas=6.0 if now % 20 < 5 else 0.5)  # 5 s spikes, under the 10 s delay
    assert fleet.events == []


def test_nothing_scales_down_before_the_quiet_period_then_one_replica_per_step() -> None:
    fleet = Fleet(CONFIG, replicas=6)
    for now in range(0, 1000):
        fleet.tick(now, busy_replicas=0.2)
    downs = [t for t, _ in fleet.events]
    assert downs[0] >= CONFIG.downscale_seconds
    assert [n for _, n in fleet.events] == [5, 4, 3, 2, 1]
    assert all(b - a >= CONFIG.downscale_step_seconds for a, b in itertools.pairwise(downs))


def test_load_during_the_descent_restarts_the_quiet_clock() -> None:
    fleet = Fleet(CONFIG, replicas=6)
    for now in range(0, 400):
        fleet.tick(now, busy_replicas=0.2)
    assert [n for _, n in fleet.events] == [5, 4]  # at 300 s and 360 s
    fleet.tick(400, busy_replicas=3.0)  # one busy second: the fleet is not quiet any more
    for now in range(401, 1000):
        fleet.tick(now, busy_replicas=0.2)
    assert [t for t, n in fleet.events if n == 3] == [701]  # a whole quiet period later


def test_no_downscale_right_after_a_scale_up() -> None:
    fleet = Fleet(CONFIG, replicas=2)
    for now in range(0, 60):
        fleet.tick(now, busy_replicas=3.0)
    up_at = fleet.events[-1][0]
    for now in range(60, int(up_at) + CONFIG.downscale_seconds):
        fleet.tick(now, busy_replicas=0.1)
    assert fleet.events[-1][0] == up_at  # the load vanished, but the quiet period has not passed


def test_oscillating_load_causes_no_more_events_than_the_policy_allows() -> None:
    """Load swings between 5 and 1 busy replicas every 2 minutes for an hour: scale up once to the peak, never
    down (no 5-minute quiet period ever happens), never thrash."""
    fleet = Fleet(CONFIG, replicas=2, cold_start=40)
    for now in range(3600):
        fleet.tick(now, busy_replicas=5.0 if (now // 120) % 2 == 0 else 1.0)
    # Saturated replicas show at most 100% busy, so the need shows in steps as replicas arrive: 2 -> 4 -> 7 -> 8
    # (5 busy / 0.65), each step at least the upscale delay apart; then nothing more for the rest of the hour.
    assert [n for _, n in fleet.events] == [4, 7, 8]
    times = [t for t, _ in fleet.events]
    assert all(b - a >= CONFIG.upscale_seconds for a, b in itertools.pairwise(times))
    assert times[-1] < 240


def test_downscale_needs_the_rest_to_stay_under_the_lower_threshold() -> None:
    # 4 replicas at 40% busy: 3 would run at 53%, above the 50% downscale threshold, so keep 4.
    fleet = Fleet(CONFIG, replicas=4)
    for now in range(1000):
        fleet.tick(now, busy_replicas=1.6)
    assert fleet.events == []


def test_bounds_and_config_checks() -> None:
    fleet = Fleet(AutoscaleConfig(min_replicas=1, max_replicas=3, upscale_seconds=0), replicas=2)
    fleet.tick(0, busy_replicas=2, queued_tokens=100 * CONFIG.target_queued_tokens)
    assert fleet.target == 3  # 4 needed, 3 allowed
    with pytest.raises(ValueError, match="min <= max"):
        AutoscaleConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="downscale_utilisation"):
        AutoscaleConfig(target_utilisation=0.5, downscale_utilisation=0.6)


def test_settings_map_onto_the_policy() -> None:
    config = AutoscaleConfig.from_settings(Settings(autoscale="2:8", autoscale_upscale_seconds=5))
    assert (config.min_replicas, config.max_replicas, config.upscale_seconds) == (2, 8, 5)
    assert parse_autoscale(" 1 : 4 ") == (1, 4)
    with pytest.raises(ValueError, match="min:max"):
        parse_autoscale("4")
    with pytest.raises(ValueError):
        Settings(autoscale="lots")
