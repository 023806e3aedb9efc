"""The routing policy and its ledger, as plain functions and objects: no Ray running."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rerankd.fleet.routing import ReplicaLoad, WorkLedger, estimate_tokens, pick_replica, rank_replicas


def loads(*pairs: tuple[float, int]) -> list[ReplicaLoad]:
    return [ReplicaLoad(f"r{i}", tokens, requests) for i, (tokens, requests) in enumerate(pairs)]


def test_tokens_policy_picks_least_outstanding_tokens_even_with_more_requests() -> None:
    # r0 holds one huge request; r1 holds three small ones: by tokens r1 is the lighter replica.
    fleet = loads((30_000, 1), (900, 3))
    assert pick_replica("tokens", fleet) == 1
    assert pick_replica("queue", fleet) == 0


def test_ranking_orders_every_replica_best_first() -> None:
    fleet = loads((500, 1), (100, 1), (300, 2))
    assert rank_replicas("tokens", fleet) == [1, 2, 0]
    assert rank_replicas("queue", fleet) == [1, 0, 2]


def test_tokens_policy_weighs_outstanding_tokens_by_replica_speed() -> None:
    # r0 (3x faster) holds 3,000 tokens: 1,000 "slow-replica tokens" to drain, less than r1's 2,000.
    fleet = [ReplicaLoad("r0", 3000, 1, speed=3.0), ReplicaLoad("r1", 2000, 1, speed=1.0)]
    assert pick_replica("tokens", fleet) == 0
    assert pick_replica("tokens", [load._replace(speed=1.0) for load in fleet]) == 1
    # Both idle: the new request is done sooner on the faster replica.
    idle = [ReplicaLoad("r0", 0, 0, speed=1.0), ReplicaLoad("r1", 0, 0, speed=2.0)]
    assert [pick_replica("tokens", idle, turn=t, tokens=500) for t in range(2)] == [1, 1]
    assert {pick_replica("tokens", [load._replace(speed=1.0) for load in idle], turn=t) for t in range(2)} == {0, 1}


def test_round_robin_rotates_and_ignores_load() -> None:
    fleet = loads((0, 0), (10**6, 50), (0, 0))
    assert [pick_replica("round-robin", fleet, turn=t) for t in range(6)] == [0, 1, 2, 0, 1, 2]


def test_ties_are_spread_by_the_turn() -> None:
    idle = loads((0, 0), (0, 0), (0, 0))
    assert {pick_replica("tokens", idle, turn=t) for t in range(3)} == {0, 1, 2}


def test_a_retry_avoids_the_replica_that_failed_unless_it_is_the_only_one() -> None:
    fleet = loads((0, 0), (5_000, 1))
    assert pick_replica("tokens", fleet, avoid="r0") == 1
    assert rank_replicas("tokens", fleet, avoid="r0") == [1, 0]
    assert pick_replica("tokens", loads((0, 0)), avoid="r0") == 0
    assert pick_replica("tokens", []) == -1


@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3)), min_size=1, max_size=8),
    st.sampled_from(["tokens", "queue", "round-robin"]),
    st.integers(0, 20),
    st.integers(0, 8),
)
def test_pick_is_always_the_head_of_the_ranking(pairs, policy, turn, avoid_index) -> None:
    fleet = loads(*pairs)
    avoid = f"r{avoid_index}"
    order = rank_replicas(policy, fleet, turn=turn, avoid=avoid)
    assert sorted(order) == list(range(len(fleet)))
    assert pick_replica(policy, fleet, turn=turn, avoid=avoid) == order[0]


def test_token_estimate_grows_with_documents_and_respects_the_window() -> None:
    short = estimate_tokens("what is sqlite", ["a small embedded database"] * 10)
    assert estimate_tokens("what is sqlite", ["a small embedded database"] * 100) == 10 * short
    huge = "word " * 10_000
    assert estimate_tokens("q", [huge], max_length=512) == 512
    assert estimate_tokens("q", [huge]) > 10_000


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ledger_books_and_releases_own_work() -> None:
    ledger = WorkLedger("me")
    ledger.routed("a", "r0", 1000)
    ledger.routed("b", "r0", 50)
    ledger.routed("c", "r1", 200)
    assert ledger.loads(["r0", "r1", "r2"]) == [
        ReplicaLoad("r0", 1050, 2),
        ReplicaLoad("r1", 200, 1),
        ReplicaLoad("r2", 0, 0),
    ]
    ledger.completed("a")
    ledger.completed("a")  # twice is harmless
    assert ledger.loads(["r0"]) == [ReplicaLoad("r0", 50, 1)]


def test_ledger_moves_a_booking_when_the_request_lands_elsewhere() -> None:
    ledger = WorkLedger("me")
    ledger.routed("a", "r0", 1000, key="k")
    ledger.routed("a", "r1", 1000, key="k")  # r0 refused it; Ray sent it to r1
    assert ledger.loads(["r0", "r1"]) == [ReplicaLoad("r0", 0, 0), ReplicaLoad("r1", 1000, 1)]
    assert ledger.previous_replica("k") == "r1"


def test_ledger_adds_other_routers_work_from_reports_but_not_its_own() -> None:
    ledger = WorkLedger("me")
    ledger.routed("a", "r0", 100)
    ledger.reported("r0", {"origins": {"me": [100, 1], "other": [4000, 2]}})
    ledger.reported("r1", {"origins": {"me": [999, 9]}})  # stale view of our own work: ignored
    ledger.reported("r2", None)
    assert ledger.loads(["r0", "r1", "r2"]) == [
        ReplicaLoad("r0", 4100, 3),
        ReplicaLoad("r1", 0, 0),
        ReplicaLoad("r2", 0, 0),
    ]


def test_ledger_takes_speeds_from_reports_and_gives_new_replicas_the_median() -> None:
    ledger = WorkLedger("me")
    assert [load.speed for load in ledger.loads(["r0", "r1"])] == [1.0, 1.0]  # nothing measured: all alike
    ledger.reported("r0", {"origins": {}, "tokens_per_second": 9000.0})
    ledger.reported("r1", {"origins": {}, "tokens_per_second": 3000.0})
    ledger.reported("r2", {"origins": {}, "tokens_per_second": 0.0})  # not measured yet
    ledger.reported("r3", {"origins": {}, "tokens_per_second": 4000.0})
    assert [load.speed for load in ledger.loads(["r0", "r1", "r2", "r3"])] == [9000.0, 3000.0, 4000.0, 4000.0]
    ledger.forget("r0")
    assert ledger.loads(["r0"])[0].speed == 1.0


def test_ledger_forgets_dead_replicas_and_stale_bookings() -> None:
    clock = Clock()
    ledger = WorkLedger("me", clock=clock)
    ledger.routed("a", "r0", 100)
    ledger.routed("b", "r1", 100)
    ledger.forget("r0")
    assert ledger.loads(["r0"]) == [ReplicaLoad("r0", 0, 0)]
    clock.now = WorkLedger.STALE_SECONDS + 1  # "b" was cancelled before dispatch and never completed
    assert ledger.loads(["r1"]) == [ReplicaLoad("r1", 0, 0)]


@pytest.mark.parametrize("policy", ["tokens", "queue"])
def test_work_aware_policies_keep_small_requests_off_a_replica_busy_with_a_big_one(policy: str) -> None:
    """Replay: one 1,000-document request, then 20 small ones, on two replicas; nothing finishes meanwhile."""
    ledger = WorkLedger("me")
    replicas = ["r0", "r1"]
    sizes = [30_000] + [300] * 20
    placed = []
    for i, tokens in enumerate(sizes):
        index = pick_replica(policy, ledger.loads(replicas), turn=i)  # type: ignore[arg-type]
        ledger.routed(str(i), replicas[index], tokens)
        placed.append(replicas[index])
    big = placed[0]
    small_with_big = sum(1 for r in placed[1:] if r == big)
    assert small_with_big == (0 if policy == "tokens" else 9)
