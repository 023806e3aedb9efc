"""Corpus statistics for BM25 beyond a request's own documents, from two sources:

- counted: exact document frequencies of a corpus, written by `rerankd corpus-stats` and loaded with `corpus_stats`;
- learned: estimated from the documents the server is sent, per model, in memory fixed at start-up: a count-min
  sketch (conservative update) of hashed terms' document frequencies, and a Bloom filter of document hashes so
  that a document sent again is counted once. Used once it has seen `corpus_stats_warm_documents` documents.

`Bm25Statistics` says which one a model's BM25 uses; without either, BM25 uses the request's own documents.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np
from prometheus_client import Gauge

from rerankd.config import Settings
from rerankd.datasets import beir_document_text
from rerankd.errors import RerankdError
from rerankd.first_stage.bm25 import K1, B, CorpusStatistics, terms
from rerankd.metrics import Metrics

log = logging.getLogger(__name__)

Source = Literal["request", "learned", "file"]
FORMAT = "rerankd-corpus-stats/1"
# What a statistics file was counted with; a file counted otherwise would give wrong IDFs silently, so it is refused.
TOKENIZER = "bm25s: words of 2+ characters, lower-cased, English stop words dropped, Snowball english stems"


@dataclass(frozen=True)
class CountedStatistics:
    """Exact document frequencies of a corpus."""

    documents: int
    average_length: float
    frequencies: dict[str, int]

    def document_frequencies(self, terms: Sequence[str]) -> np.ndarray:
        return np.array([self.frequencies.get(term, 0) for term in terms], dtype=np.float64)

    @classmethod
    def count(cls, texts: Iterable[str], batch: int = 5_000) -> CountedStatistics:
        frequencies: Counter[str] = Counter()
        documents = length = 0
        for chunk in _batches(texts, batch):
            for document in terms(chunk):
                frequencies.update(set(document))
                length += len(document)
            documents += len(chunk)
        if documents == 0:
            raise RerankdError("corpus-stats: the corpus has no documents")
        return cls(documents, length / documents, dict(frequencies))

    def save(self, path: Path, source: str = "") -> None:
        record = {
            "format": FORMAT,
            "tokenizer": TOKENIZER,
            "bm25": {"k1": K1, "b": B, "idf": "lucene: ln(1 + (N - df + 0.5) / (df + 0.5))"},
            "source": source,
            "documents": self.documents,
            "average_length": self.average_length,
            "document_frequencies": dict(sorted(self.frequencies.items())),
        }
        with _open(path, "wt") as out:
            json.dump(record, out, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def load(cls, path: Path) -> CountedStatistics:
        try:
            with _open(path, "rt") as lines:
                record = json.load(lines)
        except (OSError, ValueError) as exc:
            raise RerankdError(f"corpus_stats: cannot read {path}: {exc}") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise RerankdError(f"corpus_stats: {path} is not a statistics file of `rerankd corpus-stats` ({FORMAT})")
        if record.get("tokenizer") != TOKENIZER:
            raise RerankdError(f"corpus_stats: {path} was counted with another tokenizer ({record.get('tokenizer')})")
        return cls(int(record["documents"]), float(record["average_length"]), record["document_frequencies"])


def _open(path: Path, mode: str) -> IO[str]:
    """A text file, gzip-compressed when its name ends in .gz."""
    if str(path).endswith(".gz"):
        return gzip.open(path, mode, encoding="utf-8")  # type: ignore[return-value]
    return open(path, mode, encoding="utf-8")


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def corpus_texts(path: Path) -> Iterator[str]:
    """The documents of a BEIR folder or `corpus.jsonl` (title and text, as `eval` reads them), else of a text file
    (one document a line, blank lines skipped)."""
    path = Path(path)
    if path.is_dir():
        path = path / "corpus.jsonl"
    with _open(path, "rt") as lines:
        if path.name.endswith((".jsonl", ".jsonl.gz")):  # a repeated _id is one document, its last entry (as eval)
            documents = (json.loads(line) for line in lines if line.strip())
            yield from {str(doc["_id"]): beir_document_text(doc) for doc in documents}.values()
        else:
            yield from (line.rstrip("\n") for line in lines if line.strip())


# Odd 64-bit multipliers: row r of the sketch reads the bits a term's hash times _MULTIPLIERS[r] leaves on top.
_MULTIPLIERS = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93], dtype=np.uint64
)
_BLOOM_HASHES = 7  # with ~9.6 bits per document, 1% of new documents are taken for seen ones


def _term_hashes(vocabulary: Sequence[str]) -> np.ndarray:
    """A stable 64-bit hash per term (the same in every process, so a saved sketch stays valid)."""
    digests = b"".join(hashlib.blake2b(term.encode(), digest_size=8).digest() for term in vocabulary)
    return np.frombuffer(digests, dtype=np.uint64)


class LearnedStatistics:
    """Document frequencies estimated from the documents seen, in at most `max_bytes` of arrays fixed at creation.

    Three quarters hold the count-min sketch (4 rows of uint32 counters; an estimate is the smallest of a term's 4
    counters, never below the true count, and conservative update keeps it close), a quarter the Bloom filter of
    document hashes. When the filter holds as many documents as it can at 1% false positives, it starts empty
    again: a document sent before then may be counted once more.
    """

    DEPTH = len(_MULTIPLIERS)

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1024:
            raise ValueError(f"learned corpus statistics need at least 1 KiB, got {max_bytes} bytes")
        self.max_bytes = max_bytes
        width = (max_bytes * 3 // 4) // (self.DEPTH * 4)
        self._sketch = np.zeros((self.DEPTH, width), dtype=np.uint32)
        self._seen = np.zeros(max_bytes - self._sketch.nbytes, dtype=np.uint8)
        self._seen_capacity = int(self._seen.size * 8 * math.log(2) ** 2 / -math.log(0.01))
        self._seen_count = 0
        self.documents = 0
        self.length = 0  # terms over every document counted
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._sketch.nbytes + self._seen.nbytes

    @property
    def average_length(self) -> float:
        return self.length / self.documents if self.documents else 0.0

    def _columns(self, hashes: np.ndarray) -> np.ndarray:
        """Each hash's counter in each row: `(DEPTH, len(hashes))`."""
        mixed = (hashes[None, :] * _MULTIPLIERS[:, None]) >> np.uint64(32)
        return (mixed % np.uint64(self._sketch.shape[1])).astype(np.int64)

    def _first_time(self, text: str) -> bool:
        """Whether `text` is new to the Bloom filter; it is recorded either way."""
        digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
        first, step = (int.from_bytes(digest[i : i + 8], "little") for i in (0, 8))
        bits = self._seen.size * 8
        positions = [(first + i * (step | 1)) % bits for i in range(_BLOOM_HASHES)]
        if all(self._seen[p >> 3] & (1 << (p & 7)) for p in positions):
            return False
        if self._seen_count >= self._seen_capacity:
            self._seen[:] = 0
            self._seen_count = 0
        for p in positions:
            self._seen[p >> 3] |= 1 << (p & 7)
        self._seen_count += 1
        return True

    def observe(self, texts: Sequence[str]) -> int:
        """Count the documents not seen before; returns how many were new."""
        with self._lock:
            new = [text for text in texts if self._first_time(text)]
        if not new:
            return 0
        documents = terms(new)  # the expensive part, outside the lock
        vocabulary = sorted({term for document in documents for term in document})
        hashes = _term_hashes(vocabulary)
        position = {term: i for i, term in enumerate(vocabulary)}
        per_document = [hashes[[position[term] for term in set(document)]] for document in documents if document]
        with self._lock:
            if per_document:
                unique, counts = np.unique(np.concatenate(per_document), return_counts=True)
                columns = self._columns(unique)
                rows = np.arange(self.DEPTH)[:, None]
                # Conservative update: raise each counter only as far as the term's estimate plus its new documents.
                target = (self._sketch[rows, columns].min(axis=0) + counts).astype(np.uint32)
                for row in range(self.DEPTH):
                    np.maximum.at(self._sketch[row], columns[row], target)
            self.documents += len(new)
            self.length += sum(len(document) for document in documents)
        return len(new)

    def document_frequencies(self, terms: Sequence[str]) -> np.ndarray:
        if not terms:
            return np.zeros(0)
        columns = self._columns(_term_hashes(terms))
        with self._lock:
            estimate = self._sketch[np.arange(self.DEPTH)[:, None], columns].min(axis=0)
            return np.minimum(estimate, self.documents).astype(np.float64)

    def save(self, path: Path) -> None:
        """Write atomically (a crash mid-write leaves the previous file)."""
        partial = path.with_name(path.name + ".partial")
        with self._lock, partial.open("wb") as out:
            counters = np.array([self.documents, self.length, self._seen_count], dtype=np.int64)
            np.savez(out, sketch=self._sketch, seen=self._seen, counters=counters)
        partial.replace(path)

    def load(self, path: Path) -> bool:
        """Read a saved estimate of the same size; False (and a warning) for another size or an unreadable file."""
        try:
            with np.load(path) as saved:
                sketch, seen, counters = saved["sketch"], saved["seen"], saved["counters"]
        except (OSError, ValueError, KeyError) as exc:
            log.warning("corpus statistics: ignoring %s (%s)", path, exc)
            return False
        if sketch.shape != self._sketch.shape or seen.shape != self._seen.shape:
            log.warning("corpus statistics: ignoring %s, saved at another corpus_stats_mb", path)
            return False
        with self._lock:
            self._sketch[:], self._seen[:] = sketch, seen
            self.documents, self.length, self._seen_count = (int(value) for value in counters)
        return True


class Bm25Statistics:
    """Which statistics each model's BM25 uses: the operator's file, else (once warm) what that model's traffic
    taught, else none (the request's own documents). Learning stops when a file is given."""

    def __init__(
        self,
        *,
        counted: CountedStatistics | None = None,
        learn_bytes: int = 0,
        warm_documents: int = 5_000,
        store: Path | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.counted = counted
        self.learn_bytes = learn_bytes if counted is None else 0
        self.warm_documents = warm_documents
        self._store = store
        self._metrics = metrics
        self._learned: dict[str, LearnedStatistics] = {}
        self._lock = threading.Lock()
        if metrics is not None and self.learn_bytes:
            model = ("model",)
            self._gauges = (
                metrics.add(Gauge, "rerankd_corpus_stats_documents", "Documents counted.", model),
                metrics.add(Gauge, "rerankd_corpus_stats_warm", "1 once BM25 uses them.", model),
                metrics.add(Gauge, "rerankd_corpus_stats_bytes", "Memory they hold.", model),
            )

    @classmethod
    def from_settings(cls, settings: Settings, metrics: Metrics | None = None) -> Bm25Statistics:
        counted = CountedStatistics.load(settings.corpus_stats) if settings.corpus_stats else None
        return cls(
            counted=counted,
            learn_bytes=int(settings.corpus_stats_mb * 2**20),
            warm_documents=settings.corpus_stats_warm_documents,
            store=settings.corpus_stats_dir,
            metrics=metrics,
        )

    def learned(self, model: str) -> LearnedStatistics:
        """`model`'s estimate, created (and read from the store, when there is one) on first use."""
        if not self.learn_bytes:
            raise ValueError("learning is off (a statistics file is given, or corpus_stats_mb is 0)")
        with self._lock:
            if model not in self._learned:
                learned = LearnedStatistics(self.learn_bytes)
                if self._store is not None and self._path(model).is_file():
                    learned.load(self._path(model))
                self._learned[model] = learned
                if self._metrics is not None:  # (learning is on: only then is an estimate made)
                    documents, warm, nbytes = (gauge.labels(model) for gauge in self._gauges)
                    documents.set_function(lambda: learned.documents)
                    warm.set_function(lambda: int(learned.documents >= self.warm_documents))
                    nbytes.set_function(lambda: learned.nbytes)
            return self._learned[model]

    def observe(self, model: str, texts: Sequence[str]) -> None:
        """Learn from a request's documents (nothing when a file is given or learning is off)."""
        if self.learn_bytes:
            self.learned(model).observe(texts)

    def choose(self, model: str) -> tuple[CorpusStatistics | None, Source]:
        if self.counted is not None:
            return self.counted, "file"
        learned = self._learned.get(model)
        if learned is not None and learned.documents >= self.warm_documents:
            return learned, "learned"
        return None, "request"

    def _path(self, model: str) -> Path:
        assert self._store is not None
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_")[-80:]
        return self._store / f"{slug}-{hashlib.blake2b(model.encode(), digest_size=4).hexdigest()}.npz"

    def save(self) -> None:
        """Write every learned estimate to the store (at shutdown), when there is one."""
        if self._store is None:
            return
        self._store.mkdir(parents=True, exist_ok=True)
        with self._lock:
            learned = dict(self._learned)
        for model, statistics in learned.items():
            statistics.save(self._path(model))


__all__ = ["Bm25Statistics", "CorpusStatistics", "CountedStatistics", "LearnedStatistics", "corpus_texts"]
