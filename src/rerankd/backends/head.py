"""The sentence-transformers modules after a model's body, run in numpy on the token states any backend returns:
Dense projections (token- or sentence-level), Pooling and Normalize, in the folder's order (models/sentence_modules).

Bi-encoders with a Dense projection get their pooled, projected embedding; late-interaction (ColBERT) models their
projected, normalised token vectors, padded `(n, tokens, dim)` (which tokens count is the engine's business).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rerankd.backends.base import Backend, Batch, pool
from rerankd.models import ModelSpec
from rerankd.models.sentence_modules import DenseLayer, Norm, Pool

_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
}
_EPSILON = 1e-12  # torch.nn.functional.normalize's, as sentence-transformers' Normalize uses


def needs_head(spec: ModelSpec) -> bool:
    """Whether the model's modules go beyond what every backend pools itself (pooling, then normalising)."""
    return spec.kind == "late-interaction" or bool(spec.modules and spec.modules.dense)


class Projection:
    """One Dense module's weights, as float32 arrays."""

    def __init__(self, layer: DenseLayer) -> None:
        tensors = _load(layer)
        self.layer = layer
        self.weight = tensors[layer.prefix + "weight"].astype(np.float32).T.copy()  # (in, out): x @ weight
        expected = (layer.in_features, layer.out_features)
        if self.weight.shape != expected:
            raise ValueError(f"{layer.weights}: a Dense of {expected} holds weights of {self.weight.shape[::-1]}")
        self.bias = tensors[layer.prefix + "bias"].astype(np.float32) if layer.bias else None
        residual = tensors.get("residual.weight")
        self.residual = None if residual is None else residual.astype(np.float32).T.copy()
        self.activation = _ACTIVATIONS[layer.activation]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = x @ self.weight
        if self.bias is not None:
            out += self.bias
        out = self.activation(out)
        if self.layer.residual:
            out = out + (x if self.residual is None else x @ self.residual)
        return out


class HeadBackend:
    """Wraps a backend that returns token states (pooling `tokens`) and runs the modules after the body."""

    def __init__(self, spec: ModelSpec, inner: Backend) -> None:
        assert spec.modules is not None, "a head needs the model's sentence-transformers modules"
        self.spec = spec
        self.inner = inner
        self.name, self.device, self.precision = inner.name, inner.device, inner.precision
        self.width_multiple, self.parallel_batches = inner.width_multiple, inner.parallel_batches
        self._steps = [Projection(step) if isinstance(step, DenseLayer) else step for step in spec.modules.steps]

    def forward(self, batch: Batch) -> np.ndarray:
        tokens: np.ndarray = self.inner.forward(batch)
        sentence: np.ndarray | None = None
        for step in self._steps:
            if isinstance(step, Projection):
                if step.layer.level == "tokens":
                    tokens = step(tokens)
                else:
                    sentence = step(_pooled(sentence))
            elif isinstance(step, Pool):
                sentence = pool(tokens, batch.attention_mask, step.mode, normalize=False)
            elif isinstance(step, Norm):
                if step.level == "tokens":
                    tokens = _normalize(tokens)
                else:
                    sentence = _normalize(_pooled(sentence))
        if self.spec.kind == "late-interaction":
            return tokens
        return _pooled(sentence)


def _pooled(sentence: np.ndarray | None) -> np.ndarray:
    if sentence is None:
        raise ValueError("a sentence-level module before any Pooling")
    return sentence


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPSILON)


def _load(layer: DenseLayer) -> dict[str, np.ndarray]:
    wanted = (layer.prefix, "residual.")
    if layer.weights.suffix == ".safetensors":
        from safetensors import safe_open

        # Only the projection's keys are read: Stanford ColBERT keeps it in the body's own (large) file.
        with safe_open(str(layer.weights), framework="np") as weights:
            return {key: weights.get_tensor(key) for key in weights.keys() if key.startswith(wanted)}  # noqa: SIM118
    import torch  # PyTorch weight files only: safetensors needs no torch

    state = torch.load(layer.weights, map_location="cpu", weights_only=True)
    return {key: value.float().numpy() for key, value in state.items() if key.startswith(wanted)}
