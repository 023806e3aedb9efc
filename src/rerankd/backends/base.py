"""The backend contract: `forward(batch) -> np.ndarray`, one row per pair or text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Batch:
    """Padded token ids of one batch; `token_type_ids` is None for models without segment embeddings."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray | None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def padded_tokens(self) -> int:
        return int(self.input_ids.size)


class Backend(Protocol):
    """Runs a model. Cross-encoders return logits `(n, num_labels)`; bi-encoders pooled embeddings `(n, dim)`."""

    name: str
    device: str
    precision: str
    # Batches are padded to a multiple of this many tokens (Tokenizer.collate): a runtime that prepares kernels per
    # input shape reuses them across requests instead of preparing new ones for every new length.
    width_multiple: int
    # Batches `forward` can run at once, each from its own thread (the scheduler runs this many workers).
    parallel_batches: int

    def forward(self, batch: Batch) -> np.ndarray: ...


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str, normalize: bool) -> np.ndarray:
    """sentence-transformers pooling over the token axis, in numpy so every backend shares it. `tokens`: no pooling,
    every token's state (the sentence-transformers modules after the body run on them: backends/head.py)."""
    if mode == "tokens":
        return hidden.astype(np.float32, copy=False)
    if mode == "cls":
        pooled = hidden[:, 0]
    elif mode == "max":
        pooled = np.where(mask[..., None] > 0, hidden, -np.inf).max(axis=1)
    else:
        weights = mask[..., None].astype(hidden.dtype)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    pooled = pooled.astype(np.float32)
    if normalize:
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return pooled
