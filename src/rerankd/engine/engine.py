"""An `Engine` is one loaded model: tokenizer + backend + scheduler, called from async code.

It turns model outputs into relevance scores with the model's own convention (sentence-transformers'):
cross-encoders give sigmoid (or raw) logits, LLM rerankers the sigmoid of logit(yes) - logit(no) (the backend
returns that difference as a one-column output), bi-encoders the cosine (or dot product) of query and document
embeddings, late-interaction models MaxSim over query and document token vectors (engine/late_interaction.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rerankd.backends import Backend, load_backend
from rerankd.backends.select import Choice
from rerankd.config import Settings
from rerankd.engine.late_interaction import LateInteraction
from rerankd.engine.queue_stats import QueueStats
from rerankd.engine.scheduler import Scheduler
from rerankd.engine.score_cache import ScoreCache, input_key
from rerankd.engine.tokenize import Encoded, Tokenizer, Tokens
from rerankd.engine.tuning import BatchTuner, sample_documents
from rerankd.engine.vector_cache import VectorCache
from rerankd.metrics import Metrics
from rerankd.models import ModelSpec

log = logging.getLogger(__name__)

_WARMUP_QUERY = "warm-up query about a fox"
_WARMUP_DOCUMENTS = 64  # the realistic 20-300 token mix the calibration's batches are cut from
_MEASURED_BATCHES = 2  # at least; then as many as `warmup_seconds` allows


@dataclass(frozen=True)
class Prepared:
    """A tokenized request. For bi-encoders the query is the first input."""

    inputs: list[Encoded]
    truncated: list[bool]  # per document
    tokens: int


@dataclass(frozen=True)
class Calibration:
    """Measured speed of this engine on this machine, from the warm-up."""

    pairs_per_second: float
    tokens_per_second: float


class Engine:
    def __init__(
        self,
        spec: ModelSpec,
        tokenizer: Tokenizer,
        backend: Backend,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self.spec = spec
        self.tokenizer = tokenizer
        self.backend = backend
        self.calibration: Calibration | None = None
        self.tuner = BatchTuner(spec, backend, settings)  # max_batch_tokens: configured, cached or measured later
        self.scheduler = Scheduler(
            self._forward,
            max_batch_tokens=self.tuner.tuning.max_batch_tokens,
            max_batch_size=settings.max_batch_size,
            max_queued_pairs=settings.max_queued_pairs,
            fair=settings.scheduling == "fair",
            name=spec.short_name,
            on_batch=metrics.batch_observer(spec.name) if metrics else None,
            workers=backend.parallel_batches,
        )
        self.cache = ScoreCache(settings.score_cache_mb * 2**20) if settings.score_cache_mb else None
        # Late-interaction models score from token vectors, cached per document instead of per pair.
        self.late: LateInteraction | None = None
        vectors = None
        if spec.kind == "late-interaction":
            if settings.vector_cache_mb:
                vectors = VectorCache(settings.vector_cache_mb * 2**20, spec.revision, settings.vector_cache_precision)
            self.late = LateInteraction(spec, tokenizer, vectors, metrics)
            self.cache = None
        self._metrics = metrics
        if metrics:
            metrics.watch_queue(spec.name, self.scheduler.stats)
            if self.cache is not None:
                metrics.score_cache_bytes.labels(spec.name).set_function(lambda: self.cache.bytes)
            if vectors is not None:
                metrics.vector_cache_bytes.labels(spec.name).set_function(lambda: vectors.bytes)

    @classmethod
    def load(
        cls, spec: ModelSpec, settings: Settings, metrics: Metrics | None = None, *, choice: Choice | None = None
    ) -> Engine:
        """The engine `choice` names (default: what the settings resolve to, backends/select.py)."""
        backend = load_backend(spec, settings, choice)
        log.info(
            "loaded %s (%s) backend=%s device=%s precision=%s max_length=%d",
            spec.name,
            spec.kind,
            backend.name,
            backend.device,
            backend.precision,
            spec.max_length,
        )
        tokenizer = Tokenizer(spec, special_tokens_in_text=settings.llm_special_tokens_in_text)
        return cls(spec, tokenizer, backend, settings, metrics)

    @property
    def description(self) -> str:
        return f"{self.backend.name}/{self.backend.device}/{self.backend.precision}"

    @property
    def query_limit(self) -> int:
        """The most query tokens the model can see: its window less the special tokens (late-interaction: the
        body's window; queries are then cut to the model's query_length, as PyLate and sentence-transformers do)."""
        if self.spec.late is not None:
            return self.spec.late.window - self.tokenizer.special_tokens(pair=False)
        return self.tokenizer.room(pair=self.spec.pairs)

    def stats(self) -> QueueStats:
        return self.scheduler.stats()

    def query_tokens(self, query: str) -> Tokens:
        """The query's tokens, once per request (every pair and every estimate reuses them)."""
        return dataclasses.replace(self.tokenizer.tokens([query])[0], text=query)

    @property
    def takes_instruction(self) -> bool:
        """Whether the model's prompt has a place for an instruction (LLM rerankers whose template reads one)."""
        return self.tokenizer.prompt is not None and self.tokenizer.prompt.takes_instruction

    async def prepare(
        self, query: Tokens | str, documents: Sequence[str], *, instruction: str | None = None
    ) -> Prepared:
        """Tokenize off the event loop."""
        return await asyncio.to_thread(self.prepare_sync, query, documents, instruction=instruction)

    def prepare_sync(
        self, query: Tokens | str, documents: Sequence[str], *, instruction: str | None = None
    ) -> Prepared:
        """Model inputs; `query` as tokens when the caller has them already (a request tokenizes it once).
        `instruction`: an LLM reranker's task description (None: the template's default)."""
        if isinstance(query, str):
            query = self.query_tokens(query)
        if self.spec.kind == "causal-lm":
            assert query.text is not None, "LLM rerankers render the query text: use Engine.query_tokens"
            inputs = self.tokenizer.encode_prompts(query.text, documents, instruction)
        elif self.late is not None:
            inputs = [self.late.encode_query(query), *self.late.encode_documents(documents)]
        elif self.spec.pairs:
            inputs = self.tokenizer.encode_pairs(query, documents)
        else:
            inputs = [self.tokenizer.single(query), *self.tokenizer.encode_texts(documents)]
        document_inputs = inputs if self.spec.pairs else inputs[1:]
        return Prepared(inputs, [item.truncated for item in document_inputs], sum(len(item) for item in inputs))

    async def score(self, prepared: Prepared, *, raw: bool = False) -> np.ndarray:
        """Relevance score per document, in document order."""
        return self.to_scores(await self.outputs(prepared.inputs), raw=raw)

    async def score_raw_and_final(self, prepared: Prepared) -> tuple[np.ndarray, np.ndarray]:
        """Both conventions from one model run: raw logits (what fusion z-scores) and the reported scores."""
        outputs = await self.outputs(prepared.inputs)
        return self.to_scores(outputs, raw=True), self.to_scores(outputs, raw=False)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of `texts` (bi-encoders only). Not through the score cache: the embedding pre-filter, the
        only caller, keeps its own cache by text (which also skips tokenizing), so a second copy would be waste."""
        return await self.scheduler.submit(await asyncio.to_thread(self.tokenizer.encode_texts, texts))

    async def outputs(self, inputs: Sequence[Encoded]) -> np.ndarray:
        """The model's output row per input: from the score cache where this exact input ran before, the rest
        through the batching queue. Late-interaction: the MaxSim score per document (its vectors are what is
        cached)."""
        if self.late is not None:
            return await self.late.scores(inputs, self.scheduler.submit)  # type: ignore[arg-type]
        if self.cache is None:
            return await self.scheduler.submit(inputs)
        keys = [input_key(item) for item in inputs]
        found = self.cache.get_many(keys)
        missing = [i for i, row in enumerate(found) if row is None]
        if self._metrics:
            self._metrics.score_cache_hits.labels(self.spec.name).inc(len(inputs) - len(missing))
            self._metrics.score_cache_misses.labels(self.spec.name).inc(len(missing))
        if not missing:
            return np.stack(found)  # type: ignore[arg-type]
        fresh = await self.scheduler.submit([inputs[i] for i in missing])
        self.cache.put_many([keys[i] for i in missing], fresh)
        if len(missing) == len(inputs):
            return fresh
        rows = np.empty((len(inputs), *fresh.shape[1:]), dtype=fresh.dtype)
        rows[missing] = fresh
        hits = [i for i, row in enumerate(found) if row is not None]
        rows[hits] = np.stack([found[i] for i in hits])  # type: ignore[misc]
        return rows

    @property
    def reports_probabilities(self) -> bool:
        """Whether the scores it reports (not raw) are probabilities: a sigmoid or softmax over logits."""
        return self.spec.kind != "bi-encoder" and self.spec.activation in ("sigmoid", "softmax")

    def to_scores(self, outputs: np.ndarray, *, raw: bool = False) -> np.ndarray:
        if self.spec.kind == "late-interaction":
            return outputs.astype(np.float32, copy=False)  # MaxSim, as sentence-transformers reports it
        if self.spec.kind == "bi-encoder":
            if self.spec.similarity == "dot":
                return (outputs[1:] @ outputs[0]).astype(np.float32)
            return cosine(outputs[1:], outputs[0])
        if self.spec.activation == "softmax":
            # Several labels: the score is the probability of the positive (last) label.
            if raw:
                return outputs[:, -1].astype(np.float32)
            shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
            return (shifted[:, -1] / shifted.sum(axis=1)).astype(np.float32)
        logits = outputs[:, 0].astype(np.float32)
        if raw or self.spec.activation == "identity":
            return logits
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def warmup(self, seconds: float) -> Calibration:
        """Pay the one-off costs with one batch, then measure the speed on at least two batches, and for at least
        `seconds`: start-up costs a few batches whatever the model's size (an LLM's batch takes seconds on a CPU).

        The batches are the scheduler's, cut from the realistic 20-300 token mix and taken from the median length
        outwards, so two of them already straddle the typical request; longer warm-ups cycle through all of them."""
        if seconds > 0:  # auto max_batch_tokens: the sweep, once per machine (cached); then calibrate with its choice
            tuned = self.tuner.measure(self._forward, self._warmup_inputs, max_batch_size=self.scheduler.max_batch_size)
            self.scheduler.set_max_batch_tokens(tuned.max_batch_tokens)
        batches = _median_out(self.scheduler.batches(self._warmup_inputs(sample_documents(_WARMUP_DOCUMENTS))))
        self._forward(batches[0])  # first-call costs (allocations, lazy initialisation) are not the model's speed
        measured = itertools.islice(itertools.cycle(batches), 1, None)
        runs, pair_count, tokens = 0, 0, 0
        started = time.perf_counter()
        deadline = started + seconds
        while runs < _MEASURED_BATCHES or time.perf_counter() < deadline:
            batch = next(measured)
            self._forward(batch)
            runs += 1
            pair_count += len(batch)
            tokens += len(batch) * max(len(item) for item in batch)
        # One batch at a time here; the scheduler's workers run that many side by side.
        elapsed = max(time.perf_counter() - started, 1e-6) / self.scheduler.workers
        self.calibration = Calibration(pair_count / elapsed, tokens / elapsed)
        log.info(
            "warmed up %s in %d batches: %.1f pairs/s, %.0f tokens/s",
            self.spec.name,
            runs + 1,
            *self.calibration.__dict__.values(),
        )
        return self.calibration

    def close(self) -> None:
        self.scheduler.close()

    def _warmup_inputs(self, documents: list[str]) -> list[Encoded]:
        return self.prepare_sync(_WARMUP_QUERY, documents).inputs

    def _forward(self, items: list[Encoded]) -> np.ndarray:
        if self.late is not None:
            return self.late.run_batch(self.backend, items)  # type: ignore[arg-type]
        return self.backend.forward(self.tokenizer.collate(items, self.backend.width_multiple))


def _median_out(batches: list[list[Encoded]]) -> list[list[Encoded]]:
    """Length-sorted batches reordered from the median outwards: m, m+1, m-1, m+2, ..."""
    middle = len(batches) // 2
    order = sorted(range(len(batches)), key=lambda i: (abs(i - middle), i < middle))
    return [batches[i] for i in order]


def cosine(documents: np.ndarray, query: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(documents, axis=1) * np.linalg.norm(query)
    return (documents @ query / np.clip(norms, 1e-12, None)).astype(np.float32)
