"""Long documents: split into overlapping token windows, score every chunk, keep the best chunk's score.

Chunks start and end on word boundaries (a word's pieces never split across chunks unless the word alone is
longer than a chunk), consecutive chunks share `overlap` tokens, and a document yields at most `max_chunks`
chunks (Cohere's `max_chunks_per_doc`): text past the cap is left out, as truncation would. A document that fits
in one chunk is scored as it is, so chunking changes nothing for short documents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rerankd.engine.tokenize import Tokenizer, Tokens, TokenSpan

MIN_CHUNK_TOKENS = 16  # a query that leaves less room than this is cut by the tokenizer instead


@dataclass(frozen=True)
class ChunkRule:
    size: int  # document tokens per chunk
    overlap: int
    max_chunks: int

    @property
    def stride(self) -> int:
        return max(1, self.size - min(self.overlap, self.size // 2))

    @property
    def reach(self) -> int:
        """Tokens of a document that its chunks can use, with room for chunk starts that move to word starts."""
        return self.max_chunks * (self.size + self.stride) + 1


def _word_start(tokens: Sequence[TokenSpan], i: int, step: int = -1) -> int:
    """The first token of the word that token `i` belongs to; with `step` 1, the first at or after `i` that starts a
    word."""
    while 0 < i < len(tokens) and tokens[i][2] >= 0 and tokens[i][2] == tokens[i - 1][2]:
        i += step
    return i


def split(tokens: Sequence[TokenSpan], rule: ChunkRule, complete: bool = True) -> tuple[list[tuple[int, int]], bool]:
    """Character spans of one text's chunks, and whether the cap left text out. One chunk = the whole text.

    `complete` is False when `tokens` are only the text's first tokens (`ChunkRule.reach` of them)."""
    n = len(tokens)
    if n <= rule.size and complete:
        return [], False
    spans: list[tuple[int, int]] = []
    start = 0
    while True:
        end = n
        if start + rule.size < n:
            snapped = _word_start(tokens, start + rule.size)
            end = snapped if snapped > start else start + rule.size
        spans.append((tokens[start][0], tokens[end - 1][1]))
        if end >= n or len(spans) == rule.max_chunks:
            return spans, end < n or not complete
        following = _word_start(tokens, start + rule.stride)
        # A word longer than the stride: go on at the next word rather than inside this one.
        start = following if following > start else _word_start(tokens, start + rule.stride, step=1)


@dataclass(frozen=True)
class Chunks:
    """The chunk texts of several documents, in document order, and which document each came from."""

    texts: list[str]
    owners: np.ndarray  # document index per chunk
    capped: list[int]  # documents with text past the chunk cap
    rule: ChunkRule

    @property
    def split_documents(self) -> int:
        return int(np.count_nonzero(np.bincount(self.owners) > 1)) if len(self.owners) else 0

    def best(self, chunk_scores: np.ndarray, documents: int) -> np.ndarray:
        """Each document's best chunk score."""
        best = np.full(documents, -np.inf, dtype=np.float64)
        np.maximum.at(best, self.owners, np.asarray(chunk_scores, dtype=np.float64))
        return best.astype(np.float32)


def rule_for(tokenizer: Tokenizer, query: Tokens | None, *, size: int, overlap: int, max_chunks: int) -> ChunkRule:
    """The chunk size: `size` tokens (0 = as many as fit), never more than the window leaves beside the query.

    `query` is None for bi-encoders, which embed the query on its own.
    """
    room = tokenizer.room(pair=False) if query is None else tokenizer.room(pair=True) - len(query)
    room = max(room, MIN_CHUNK_TOKENS)
    return ChunkRule(min(size, room) if size else room, overlap, max_chunks)


def chunk(tokenizer: Tokenizer, documents: Sequence[str], rule: ChunkRule) -> Chunks:
    texts: list[str] = []
    owners: list[int] = []
    capped: list[int] = []
    # Only the text the chunks can use is tokenized: a 10 MB document costs what its first chunks cost.
    for index, (document, tokens) in enumerate(
        zip(documents, tokenizer.encode_prefix(documents, rule.reach, spans=True), strict=True)
    ):
        spans, cut = split(tokens.spans or [], rule, tokens.complete)
        pieces = [document[start:end] for start, end in spans] or [document]
        texts.extend(pieces)
        owners.extend([index] * len(pieces))
        if cut:
            capped.append(index)
    return Chunks(texts, np.asarray(owners, dtype=np.int64), capped, rule)
