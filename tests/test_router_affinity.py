"""Cache-affinity routing as pure policy: the ledger's memory of queries, and `affine_index`'s margin."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rerankd.config import Settings
from rerankd.fleet.routing import (
    ReplicaLoad,
    WorkLedger,
    affine_index,
    affinity_key,
    document_affinity_key,
    pick_replica,
    rank_replicas,
)
from rerankd.fleet.service import request_affinity
from rerankd.pipeline.types import ModelInfo, RerankRequest


def finish(load: ReplicaLoad, tokens: float) -> float:
    return (load.tokens + tokens) / load.speed


def test_the_query_s_replica_wins_within_the_request_s_own_tokens_of_the_least_loaded_and_not_beyond() -> None:
    # r0 is idle; the query was served on r1. A 1,000-token request is done at 1,000 on r0, at 1,000 + r1's work
    # on r1; r1 is preferred while that is within the request's own 1,000 tokens of r0's.
    for outstanding, expected in [(0, 1), (600, 1), (1000, 1), (1001, 0), (5000, 0)]:
        fleet = [ReplicaLoad("r0", 0, 0), ReplicaLoad("r1", outstanding, 1)]
        assert pick_replica("tokens", fleet, tokens=1000, prefer="r1") == expected, outstanding
        assert rank_replicas("tokens", fleet, tokens=1000, prefer="r1")[0] == expected, outstanding


def test_the_margin_is_counted_in_time_on_the_preferred_replica() -> None:
    # r1 is twice as fast: its 1,800 outstanding tokens take as long as 900 on r0; the request's own 1,000 tokens
    # take 500 there. Done at 1,400 on r1 against 1,000 on r0: within the margin (500) -> r1.
    fleet = [ReplicaLoad("r0", 0, 0, speed=1.0), ReplicaLoad("r1", 1800, 1, speed=2.0)]
    assert pick_replica("tokens", fleet, tokens=1000, prefer="r1") == 1
    # Half as fast: its 600 outstanding tokens take 1,200 on r0's clock, the request 2,000 more: 3,200 > 1,000 +
    # 2,000 -> r0.
    slow = [ReplicaLoad("r0", 0, 0, speed=1.0), ReplicaLoad("r1", 600, 1, speed=0.5)]
    assert pick_replica("tokens", slow, tokens=1000, prefer="r1") == 0


def test_slack_widens_the_margin_to_a_share_of_the_least_loaded_replica_s_finish() -> None:
    # Deep queues: r0 at 10,000, r1 at 11,500; a 1,000-token request. Own tokens alone: 12,500 > 11,000 + 1,000.
    fleet = [ReplicaLoad("r0", 10_000, 5), ReplicaLoad("r1", 11_500, 5)]
    assert pick_replica("tokens", fleet, tokens=1000, prefer="r1") == 0
    assert pick_replica("tokens", fleet, tokens=1000, prefer="r1", slack=0.25) == 1  # 12,500 <= 11,000 x 1.25


def test_affinity_never_picks_a_replica_that_is_not_routable_or_that_failed_the_request() -> None:
    fleet = [ReplicaLoad("r0", 0, 0), ReplicaLoad("r1", 100, 1)]
    # The query's replica is gone (not among the candidates Ray offers): the least loaded one.
    assert pick_replica("tokens", fleet, tokens=1000, prefer="r7") == 0
    assert rank_replicas("tokens", fleet, tokens=1000, prefer="r7") == [0, 1]
    # A retry: the query's replica is the one that failed it; it stays last.
    assert pick_replica("tokens", fleet, tokens=1000, prefer="r1", avoid="r1") == 0
    assert rank_replicas("tokens", fleet, tokens=1000, prefer="r1", avoid="r1") == [0, 1]
    # The avoided replica was the least loaded: the preference cannot bring it back either.
    assert pick_replica("tokens", fleet[::-1], tokens=1000, prefer="r0", avoid="r0") == 0  # r1, at index 0


def test_affinity_is_a_term_of_tokens_routing_only() -> None:
    fleet = [ReplicaLoad("r0", 0, 0), ReplicaLoad("r1", 100, 1)]
    assert pick_replica("tokens", fleet, tokens=1000, prefer="r1") == 1
    assert pick_replica("queue", fleet, tokens=1000, prefer="r1") == 0
    assert [pick_replica("round-robin", fleet, turn=t, prefer="r1") for t in range(4)] == [0, 1, 0, 1]


@given(
    st.lists(st.tuples(st.integers(0, 20_000), st.sampled_from([0.5, 1.0, 2.0])), min_size=1, max_size=8),
    st.integers(1, 5_000),
    st.integers(0, 9),
    st.integers(0, 9),
    st.integers(0, 20),
)
def test_affinity_moves_only_the_preferred_replica_and_only_within_the_margin(
    replicas, tokens, prefer_index, avoid_index, turn
) -> None:
    fleet = [ReplicaLoad(f"r{i}", work, 1, speed) for i, (work, speed) in enumerate(replicas)]
    prefer, avoid = f"r{prefer_index}", f"r{avoid_index}"
    plain = rank_replicas("tokens", fleet, turn=turn, avoid=avoid, tokens=tokens)
    order = rank_replicas("tokens", fleet, turn=turn, avoid=avoid, tokens=tokens, prefer=prefer)
    assert pick_replica("tokens", fleet, turn=turn, avoid=avoid, tokens=tokens, prefer=prefer) == order[0]
    assert rank_replicas("tokens", fleet, turn=turn, avoid=avoid, tokens=tokens, prefer=None) == plain
    if order == plain:
        return
    # Changed: the preferred replica, moved to the front, the rest in their order, and it finishes in the margin.
    chosen = fleet[order[0]]
    assert chosen.replica == prefer != avoid
    assert order[1:] == [i for i in plain if i != order[0]]
    assert finish(chosen, tokens) <= finish(fleet[plain[0]], tokens) + tokens / chosen.speed
    assert affine_index("tokens", fleet, plain[0], prefer=prefer, avoid=avoid, tokens=tokens) == order[0]


def test_the_ledger_remembers_where_each_query_went_last() -> None:
    ledger = WorkLedger("me")
    assert ledger.affine_replica("q1") is None
    assert ledger.affine_replica(None) is None
    ledger.routed("a", "r0", 100, key="ka", affinity="q1")
    ledger.routed("a", "r1", 100, key="ka", affinity="q1")  # r0 refused it; Ray sent it to r1
    ledger.routed("b", "r2", 100, key="kb")  # no affinity: remembered for retries only
    assert ledger.affine_replica("q1") == "r1"
    ledger.completed("a")
    assert ledger.affine_replica("q1") == "r1"  # outlives the request: that is the point
    ledger.routed("c", "r2", 100, affinity="q1")
    assert ledger.affine_replica("q1") == "r2"


def test_the_ledger_s_memory_of_queries_is_bounded_oldest_first_out() -> None:
    ledger = WorkLedger("me", affinity_queries=3)
    for n in range(5):
        ledger.routed(str(n), f"r{n}", 10, affinity=f"q{n}")
    ledger.routed("again", "r2", 10, affinity="q2")  # q2 used again: now the newest
    ledger.routed("new", "r5", 10, affinity="q5")
    assert [ledger.affine_replica(f"q{n}") for n in range(6)] == [None, None, "r2", None, "r4", "r5"]
    assert len(ledger._affinity) == 3


def test_a_hot_query_spreads_once_its_replica_is_a_request_ahead() -> None:
    """Replay: 20 requests for the same query on two replicas, nothing finishes meanwhile. Affinity may keep one
    request more on the query's replica than plain token routing, never more."""
    for affinity in (False, True):
        ledger = WorkLedger("me")
        for n in range(20):
            prefer = ledger.affine_replica("q") if affinity else None
            index = pick_replica("tokens", ledger.loads(["r0", "r1"]), turn=n, tokens=1000, prefer=prefer)
            ledger.routed(str(n), ["r0", "r1"][index], 1000, affinity="q")
        r0, r1 = (load.tokens for load in ledger.loads(["r0", "r1"]))
        assert abs(r0 - r1) <= (2000 if affinity else 1000)
        assert r0 + r1 == 20_000


def test_the_affinity_key_names_model_query_and_instruction() -> None:
    key = affinity_key("m", "what is sqlite", None)
    assert key == affinity_key("m", "what is sqlite", "")
    assert len({
        key,
        affinity_key("other", "what is sqlite", None),
        affinity_key("m", "what is sqlite?", None),
        affinity_key("m", "what is sqlite", "find packages"),
        affinity_key("mw", "hat is sqlite", None),  # the parts are delimited
    }) == 5  # fmt: skip


def test_the_ingress_sends_an_affinity_key_only_where_replicas_cache_scores_and_the_setting_is_on() -> None:
    request = RerankRequest("what is sqlite", ["a database"], model="m")
    assert request_affinity(Settings(), request) == affinity_key("m", "what is sqlite", None)
    assert request_affinity(Settings(cache_affinity=False), request) is None
    assert request_affinity(Settings(score_cache_mb=0), request) is None
    other_page = RerankRequest("what is sqlite", ["another database"], model="m", top_n=3)
    assert request_affinity(Settings(), other_page) == request_affinity(Settings(), request)


LATE = ModelInfo("colbert", "late-interaction", ("colbert-small",), 512, "onnx/fp32")
CROSS = ModelInfo("ce", "cross-encoder", ("default",), 512, "onnx/fp32")


def test_a_late_interaction_request_is_keyed_by_its_documents_whatever_the_query() -> None:
    documents = ["sqlite: a C library", "postgresql server", "a strategy game"]
    key = document_affinity_key("colbert", documents)
    assert key == document_affinity_key("colbert", list(reversed(documents)))  # a set: order does not matter
    assert key != document_affinity_key("other-model", documents)
    for request in (
        RerankRequest("what is sqlite", documents, model="colbert"),
        RerankRequest("another query", documents, model="colbert-small"),  # an alias: the same model
        RerankRequest("a cascade", documents, model="ce", first_stage_model="colbert"),  # its first stage
    ):
        assert request_affinity(Settings(), request, [CROSS, LATE]) == key, request
    # Without a vector cache the documents' vectors are nowhere: the query's score cache is what affinity serves.
    plain = RerankRequest("what is sqlite", documents, model="colbert")
    assert request_affinity(Settings(vector_cache_mb=0), plain, [LATE]) == affinity_key(
        "colbert", "what is sqlite", None
    )
    assert request_affinity(Settings(cache_affinity=False), plain, [LATE]) is None
    assert request_affinity(Settings(), RerankRequest("q", documents), [CROSS, LATE]) == affinity_key("", "q", None)
    # A cross-encoder request with no first stage keeps its query key, whichever model is the default.
    assert request_affinity(Settings(), RerankRequest("q", documents, model="ce"), [LATE, CROSS]) == affinity_key(
        "ce", "q", None
    )


def test_overlapping_document_sets_share_a_key_as_often_as_they_overlap() -> None:
    # MinHash: two sets with Jaccard similarity J get the same key with probability J.
    agree = 0
    trials = 2000
    for trial in range(trials):
        shared = [f"doc {trial} shared {i}" for i in range(50)]
        first = shared + [f"doc {trial} first {i}" for i in range(25)]
        second = shared + [f"doc {trial} second {i}" for i in range(25)]  # J = 50 / 100
        agree += document_affinity_key("m", first) == document_affinity_key("m", second)
    assert 0.45 <= agree / trials <= 0.55
