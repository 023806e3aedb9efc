"""The score step: the model's score of each candidate (a long document's best chunk's, when chunking), the 413s
of documents that cannot be scored whole with truncation off, and deadline slicing.

With a latency budget, candidates are scored best-first in slices, and no slice starts that would end past the
deadline: the machine's speed swings, and what is left unscored is the least promising (first-stage order).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rerankd.engine.engine import Engine
from rerankd.engine.tokenize import Tokens
from rerankd.errors import PayloadTooLarge
from rerankd.pipeline import chunking
from rerankd.pipeline.costs import CostModel
from rerankd.pipeline.planner import Plan
from rerankd.pipeline.run.options import Options

# Slices of this many documents, none started that would end after this share of the budget (the rest is for the
# answer itself).
DEADLINE_SLICE = 8
DEADLINE_SHARE = 0.92


@dataclass(frozen=True)
class Scored:
    raw: np.ndarray  # per candidate: logits (what fusion uses)
    final: np.ndarray  # per candidate: the scores the request reports (sigmoid unless raw_scores)
    tokens: int
    meta: dict[str, Any]

    @staticmethod
    def concat(parts: list[Scored]) -> Scored:
        meta = dict(parts[-1].meta)
        if "chunking" in meta:  # counts add up over the slices
            counts = ("chunks", "split_documents", "capped_documents")
            meta["chunking"] = {
                **meta["chunking"],
                **{key: sum(part.meta["chunking"][key] for part in parts) for key in counts},
            }
        return Scored(
            np.concatenate([part.raw for part in parts]),
            np.concatenate([part.final for part in parts]),
            sum(part.tokens for part in parts),
            meta,
        )


@dataclass(frozen=True)
class ScoringJob:
    """What scoring a request's candidates needs, whichever slice of them is scored."""

    engine: Engine
    query: Tokens
    documents: Sequence[str]
    rule: chunking.ChunkRule | None
    options: Options
    costs: CostModel  # learns characters per token from what the engine tokenized


def chunk_rule(engine: Engine, query: Tokens, options: Options) -> chunking.ChunkRule | None:
    """The request's chunk rule on `engine`: chunks that fit beside the query; None when not chunking."""
    if options.chunks is None:
        return None
    pair_query = query if engine.spec.pairs else None
    return chunking.rule_for(
        engine.tokenizer,
        pair_query,
        size=options.chunks.tokens,
        overlap=options.chunks.overlap,
        max_chunks=options.chunks.max_chunks,
    )


def rough_rule(engine: Engine, options: Options) -> chunking.ChunkRule | None:
    """The chunk rule before the query is tokenized (admission): chunks of the requested size, else half the
    window."""
    if options.chunks is None:
        return None
    size = options.chunks.tokens or engine.spec.max_length // 2
    return chunking.ChunkRule(size, options.chunks.overlap, options.chunks.max_chunks)


def deadline(started: float, chosen: Plan, options: Options) -> float | None:
    """When scoring must stop (`time.perf_counter`): only a cut request under a budget has a deadline; a direct
    one was planned to fit and scores everything."""
    if not chosen.cuts or options.budget_ms is None:
        return None
    return started + DEADLINE_SHARE * options.budget_ms / 1000


async def score_until(
    score: Callable[[np.ndarray], Awaitable[Scored]],
    candidates: np.ndarray,
    deadline: float | None,
    clock: Callable[[], float] = time.perf_counter,
) -> Scored:
    """`score` over `candidates` (best first) in slices, starting none that would end past `deadline` at the
    speed the last slice had; the first slice always runs. No deadline: one call. Returns the leading candidates
    scored."""
    if deadline is None:
        return await score(candidates)
    parts: list[Scored] = []
    done, seconds_per_document = 0, 0.0
    while done < len(candidates):
        size = min(DEADLINE_SLICE, len(candidates) - done)
        if parts and clock() + seconds_per_document * size > deadline:
            break
        started = clock()
        parts.append(await score(candidates[done : done + size]))
        seconds_per_document = (clock() - started) / size
        done += size
    return Scored.concat(parts)


async def score(job: ScoringJob, candidates: np.ndarray) -> Scored:
    """The model's score of each of `candidates` (indices into the job's documents), in their order."""
    engine, query, documents, rule, options = job.engine, job.query, job.documents, job.rule, job.options
    texts = [documents[i] for i in candidates]
    chunks = None if rule is None else await asyncio.to_thread(chunking.chunk, engine.tokenizer, texts, rule)
    if chunks is not None and chunks.capped and not options.truncate:
        first = int(candidates[chunks.capped[0]])
        raise PayloadTooLarge(
            f"{options.documents_field}[{first}]: needs more than max_chunks_per_doc={chunks.rule.max_chunks} "
            f"chunks of {chunks.rule.size} tokens and truncation is off; raise max_chunks_per_doc or set "
            "truncate to true"
        )
    inputs = texts if chunks is None else chunks.texts
    prepared = await engine.prepare(query, inputs, instruction=options.instruction)
    if not options.truncate and any(prepared.truncated):
        position = prepared.truncated.index(True)
        first = int(candidates[position if chunks is None else chunks.owners[position]])
        raise PayloadTooLarge(
            f"{options.documents_field}[{first}]: longer than the model's limit of {engine.spec.max_length} "
            "tokens (with the query) and truncation is off; set truncate to true to cut it"
        )
    job.costs.learn_prepared(engine, query, inputs, prepared)
    raw, final = await engine.score_raw_and_final(prepared)
    if options.raw_scores:
        final = raw
    meta: dict[str, Any] = {}
    if chunks is not None:
        raw, final = chunks.best(raw, len(texts)), chunks.best(final, len(texts))
        meta["chunking"] = {
            "chunk_tokens": chunks.rule.size,
            "overlap_tokens": chunks.rule.size - chunks.rule.stride,
            "max_chunks_per_doc": chunks.rule.max_chunks,
            "chunks": len(chunks.texts),
            "split_documents": chunks.split_documents,
            "capped_documents": len(chunks.capped),
        }
    return Scored(raw, final, prepared.tokens, meta)
