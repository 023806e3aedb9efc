"""Tokenizing only the part of a long text that can reach the model: a prefix, grown until it decides the result
(a 1 MB document never tokenizes whole for a 512-token window)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from rerankd.vocabulary import CHARS_PER_TOKEN

R = TypeVar("R")

# The first prefix tried holds 1.5x the average characters per token asked for, so most texts decide at once.
FIRST_PREFIX_CHARS_PER_TOKEN = CHARS_PER_TOKEN * 3 // 2


def by_growing_prefix(
    texts: Sequence[str], max_tokens: int, attempt: Callable[[list[int], list[str]], list[R | None]]
) -> list[R]:
    """A result per text: `attempt(indices, prefixes)` answers each text's prefix, or None when it needs more of
    the text; the prefixes still undecided grow 4x and are tried again (a whole text always decides)."""
    results: list[R | None] = [None] * len(texts)
    chars = max(64, FIRST_PREFIX_CHARS_PER_TOKEN * max_tokens)
    pending = list(range(len(texts)))
    while pending:
        answers = attempt(pending, [texts[i][:chars] for i in pending])
        for i, answer in zip(pending, answers, strict=True):
            results[i] = answer
        pending, chars = [i for i in pending if results[i] is None], chars * 4
    return results  # type: ignore[return-value]  # every entry is set: the loop ends when none is None
