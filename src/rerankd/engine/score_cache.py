"""Model outputs of inputs already run: repeated pairs (pagination, retries, several users asking the same thing,
agents re-ranking overlapping candidates) skip inference.

The key is a hash of the exact model input (token ids and type ids), so it covers the query, the document, the
truncation, the template and any instruction at once, and can never return a row for a different input. Each
engine has its own cache (so the model, its revision, backend and precision are part of the key by
construction). Bounded in bytes, least recently used first out. Thread-safe.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import numpy as np
from cachetools import LRUCache

from rerankd.engine.tokenize import Encoded

# Bytes an entry costs beyond its row: the 16-byte key, the array object, the cache's own bookkeeping.
ENTRY_OVERHEAD_BYTES = 200


def input_key(item: Encoded) -> bytes:
    digest = hashlib.blake2b(item.ids.tobytes(), digest_size=16)
    if item.type_ids is not None:
        digest.update(item.type_ids.tobytes())
    return digest.digest()


class ScoreCache:
    def __init__(self, max_bytes: int) -> None:
        self._rows: LRUCache[bytes, np.ndarray] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda row: row.nbytes + ENTRY_OVERHEAD_BYTES
        )
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        with self._lock:
            return int(self._rows.currsize)

    def get_many(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        with self._lock:
            return [self._rows.get(key) for key in keys]

    def put_many(self, keys: Sequence[bytes], rows: np.ndarray) -> None:
        with self._lock:
            for key, row in zip(keys, rows, strict=True):
                self._rows[key] = row.copy()  # not a view: the batch's array would stay alive with it
