"""The strategy planner: which documents the model scores, so that a request meets its latency budget.

Pure logic over measured costs, so it is testable with any speed figure. The rules:

- `direct` scores every document.
- `hybrid` (BM25) and `bi-encoder` (embeddings) cut to K candidates by a first stage and score those. K is the request's
  `candidates`, else the largest K whose estimate fits the budget, else the server's default.
- `auto` is `direct` when that fits the budget (or there is no budget), else `hybrid` with the largest K that fits.
  A request's `candidates` caps K in every strategy but `direct`.

Plans aim at `HEADROOM` of the budget: times swing between runs and the rest absorbs it. A first stage's own
time is measured, not guessed: the runner plans again after it with `spent_ms` set, which shrinks K if needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rerankd.vocabulary import ExecutedStrategy, Strategy

HEADROOM = 0.85
MIN_CANDIDATES = 10  # below this a reranker has too little to reorder; a smaller budget is reported as missed


@dataclass(frozen=True)
class Costs:
    """What the model's work costs for this request, as measured on this engine."""

    pairs_per_second: float  # model throughput at this request's document lengths
    pairs_per_document: float = 1.0  # more than 1 when long documents are chunked
    fixed_ms: float = 0.0  # time that does not depend on K: work queued ahead, BM25 for fusion
    first_stage_ms: float = 0.0  # a first stage's own time before it ran (a cascade's first model; BM25's is ~0)
    rescored_head: int = 0  # int8-rescore: documents its head engine scores again (pipeline/rescore.py); 0 = none
    rescored_pairs_per_second: float = 0.0  # the head engine's throughput

    def model_ms(self, documents: int) -> float:
        """The model's time for `documents` candidates. With a rescored head, up to `rescored_head` of them are
        scored by the head engine alone; more, by the model and then the top `rescored_head` again."""
        head, head_speed = self.rescored_head, self.rescored_pairs_per_second
        if not head:
            return self._ms(documents, self.pairs_per_second)
        if documents <= head:
            return self._ms(documents, head_speed)
        return self._ms(documents, self.pairs_per_second) + self._ms(head, head_speed)

    def most_within(self, ms: float, documents: int) -> int:
        """The most candidates, of `documents`, whose `model_ms` fits in `ms` (it grows with the candidates)."""
        head, head_speed = self.rescored_head, self.rescored_pairs_per_second
        if not head:
            return self._fit(ms, self.pairs_per_second, documents)
        beyond = self._fit(ms - self._ms(head, head_speed), self.pairs_per_second, documents)
        return beyond if beyond > head else self._fit(ms, head_speed, min(head, documents))

    def _ms(self, documents: int, pairs_per_second: float) -> float:
        return 1000.0 * documents * self.pairs_per_document / pairs_per_second

    def _fit(self, ms: float, pairs_per_second: float, most: int) -> int:
        one = self._ms(1, pairs_per_second)
        return min(math.floor(max(ms, 0.0) / one), most) if one > 0 else most


@dataclass(frozen=True)
class Plan:
    strategy: ExecutedStrategy
    candidates: int  # documents the model scores
    documents: int
    estimate_ms: float
    budget_ms: float | None
    reason: str

    @property
    def cuts(self) -> bool:
        """Whether a first stage cuts the documents to K candidates."""
        return self.strategy != "direct"


def plan(
    requested: Strategy,
    documents: int,
    costs: Costs,
    *,
    budget_ms: float | None = None,
    candidates: int | None = None,
    default_candidates: int = 100,
    spent_ms: float = 0.0,
    headroom: float = HEADROOM,
) -> Plan:
    """Choose the strategy and K for `documents` documents; `spent_ms` is time already used (the first stage)."""
    usable_ms = None if budget_ms is None else budget_ms * headroom - costs.fixed_ms - spent_ms
    first_stage_ms = 0.0 if spent_ms else costs.first_stage_ms  # once it ran, `spent_ms` holds its measured time

    def make(strategy: ExecutedStrategy, k: int, reason: str) -> Plan:
        before = first_stage_ms if strategy != "direct" else 0.0
        estimate = costs.fixed_ms + spent_ms + before + costs.model_ms(k)
        return Plan(strategy, k, documents, round(estimate, 1), budget_ms, reason)

    if requested == "direct":
        return make("direct", documents, "requested")
    cap = candidates if candidates is not None else documents
    if requested == "auto":
        if cap >= documents and (usable_ms is None or costs.model_ms(documents) <= usable_ms):
            return make("direct", documents, "no budget" if budget_ms is None else "direct fits the budget")
        strategy: ExecutedStrategy = "hybrid"
    else:
        strategy = requested
        if candidates is None and budget_ms is None:
            cap = default_candidates
    k, reason = cap, "candidates" if candidates is not None else "default candidates"
    if usable_ms is not None:
        usable_ms -= first_stage_ms
        fits = costs.most_within(usable_ms, documents)
        if fits < k:
            k, reason = fits, "largest K within the budget"
        if k < MIN_CANDIDATES:
            k, reason = MIN_CANDIDATES, f"budget too small: scoring the minimum of {MIN_CANDIDATES}"
    k = min(k, documents)
    if k >= documents:
        return make("direct", documents, "the pre-filter would keep every document")
    return make(strategy, k, reason)
