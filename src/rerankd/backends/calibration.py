"""Calibration inputs for static int8 quantization: (query, passage) pairs for cross-encoders, texts for bi-encoders.

Static quantization fixes each activation's int8 range from the inputs it sees while calibrating. Those ranges follow
the text's token statistics (common words, rare sub-words, digits, punctuation, code), its lengths and, for a
cross-encoder, the mix of matching and non-matching pairs, far more than its subject. So the package ships a small,
varied, hand-written English set (calibration_texts.json: many domains, one sentence to ~280 words) rather than a
sample of any one corpus, which also keeps calibration apart from the data the quantized model is evaluated on.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TypeVar

RELEVANT_SHARE = 0.25  # about 1 relevant pair to 3 non-relevant ones, as in a typical rerank request's candidates

_Item = TypeVar("_Item")


@dataclass(frozen=True)
class CalibrationSet:
    queries: tuple[str, ...]
    passages: tuple[str, ...]
    relevant: frozenset[tuple[int, int]]  # (query index, passage index)


@functools.cache
def calibration_set() -> CalibrationSet:
    """The packaged set, loaded once."""
    raw = json.loads(resources.files(__package__).joinpath("calibration_texts.json").read_text(encoding="utf-8"))
    return CalibrationSet(
        queries=tuple(raw["queries"]),
        passages=tuple(raw["passages"]),
        relevant=frozenset((query, passage) for query, passage in raw["relevant"]),
    )


def calibration_pairs(count: int = 256, seed: int = 0) -> list[tuple[str, str]]:
    """`count` (query, passage) pairs, about a quarter relevant; the same list for the same arguments.

    The non-relevant pairs walk every passage (shuffled) before reusing one, so the whole range of lengths is seen.
    """
    _check(count)
    texts = calibration_set()
    rng = random.Random(seed)
    relevant_count = round(count * RELEVANT_SHARE)
    pairs = list(_shuffled_cycle(sorted(texts.relevant), relevant_count, rng))
    for passage in _shuffled_cycle(range(len(texts.passages)), count - relevant_count, rng):
        others = [query for query in range(len(texts.queries)) if (query, passage) not in texts.relevant]
        pairs.append((rng.choice(others), passage))
    rng.shuffle(pairs)
    return [(texts.queries[query], texts.passages[passage]) for query, passage in pairs]


def calibration_texts(count: int = 256, seed: int = 0) -> list[str]:
    """`count` single texts (queries and passages, shuffled together) for bi-encoders; deterministic."""
    _check(count)
    texts = calibration_set()
    return list(_shuffled_cycle(texts.queries + texts.passages, count, random.Random(seed)))


def _shuffled_cycle(items: Sequence[_Item], count: int, rng: random.Random) -> Iterator[_Item]:
    """`count` items: shuffled passes over `items`, each item used once per pass."""
    order: list[_Item] = []
    for _ in range(count):
        if not order:
            order = list(items)
            rng.shuffle(order)
        yield order.pop()


def _check(count: int) -> None:
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
