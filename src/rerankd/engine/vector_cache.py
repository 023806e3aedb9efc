"""Late-interaction document vectors already encoded, so a document seen before costs no encoder time (nor
tokenizing): reranking the same candidates for many queries is then MaxSim alone.

Keyed by the model's revision and a hash of the document text (the vectors do not depend on the query). Stored in
fp16 by default (half of fp32's memory; the score drift it causes is measured in bench/late_interaction.py) and
bounded in bytes, least recently used first out. Thread-safe.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from cachetools import LRUCache

# Bytes an entry costs beyond its vectors: the key, the array and entry objects, the cache's bookkeeping
# (measured with tracemalloc in tests/test_late_interaction.py).
ENTRY_OVERHEAD_BYTES = 400
Precision = Literal["fp16", "fp32"]
_DTYPES = {"fp16": np.float16, "fp32": np.float32}


@dataclass(frozen=True, slots=True)
class CachedDocument:
    vectors: np.ndarray  # (scored tokens, dim) in the cache's precision
    tokens: int  # model input tokens (for usage and cost figures)
    truncated: bool  # whether the model's window cut the document


class VectorCache:
    def __init__(self, max_bytes: int, revision: str, precision: Precision = "fp16") -> None:
        self.max_bytes = max_bytes
        self.precision = precision
        self._revision = revision.encode()
        self._dtype = _DTYPES[precision]
        self._entries: LRUCache[bytes, CachedDocument] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda entry: entry.vectors.nbytes + ENTRY_OVERHEAD_BYTES
        )
        self._lock = threading.Lock()

    def key(self, text: str) -> bytes:
        digest = hashlib.blake2b(self._revision, digest_size=16)
        digest.update(text.encode("utf-8", "surrogatepass"))
        return digest.digest()

    @property
    def bytes(self) -> int:
        with self._lock:
            return int(self._entries.currsize)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get_many(self, keys: Sequence[bytes]) -> list[CachedDocument | None]:
        with self._lock:
            return [self._entries.get(key) for key in keys]

    def put(self, key: bytes, vectors: np.ndarray, tokens: int, truncated: bool) -> None:
        entry = CachedDocument(vectors.astype(self._dtype), tokens, truncated)  # a copy: the batch's array is freed
        if entry.vectors.nbytes + ENTRY_OVERHEAD_BYTES > self.max_bytes:
            return  # larger than the whole cache: LRUCache would raise
        with self._lock:
            self._entries[key] = entry
