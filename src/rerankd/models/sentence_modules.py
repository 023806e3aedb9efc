"""A sentence-transformers folder's module list (`modules.json`) and similarity, read into steps rerankd runs
exactly, or refused at start-up naming what it cannot run.

After the `Transformer` (the model body, which a backend runs) come numpy steps over its token states: `Dense`
projections (token- or sentence-level, sentence-transformers' and PyLate's), `Pooling`, `Normalize` and, for
multi-vector (ColBERT) models, `MultiVectorMask`. A module of any other type, a pooling mode, an activation or a
similarity other than those is refused: serving the model without it would answer with different scores and no
warning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rerankd.errors import ModelNotFound

Level = Literal["tokens", "sentence"]
Activation = Literal["identity", "tanh", "relu", "sigmoid"]
Similarity = Literal["cosine", "dot", "maxsim"]

# torch activation classes as sentence-transformers saves them, and what numpy computes for each.
ACTIVATIONS: dict[str, Activation] = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
}
POOLING_MODES = ("mean", "cls", "max")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# sentence-transformers' names for each similarity, as saved in config_sentence_transformers.json.
SIMILARITIES: dict[str, Similarity] = {"cosine": "cosine", "dot": "dot", "maxsim": "maxsim"}
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
}


class UnsupportedModule(ModelNotFound):
    """The folder lists a sentence-transformers module (or a setting) that rerankd cannot run exactly."""


@dataclass(frozen=True)
class DenseLayer:
    """A linear projection `activation(x @ W.T + b)` (+ a residual), read from `weights` under `prefix`."""

    weights: Path  # a safetensors or PyTorch file
    in_features: int
    out_features: int
    bias: bool
    activation: Activation
    level: Level  # the token states, or the pooled sentence embedding
    residual: bool = False
    prefix: str = "linear."


@dataclass(frozen=True)
class Pool:
    mode: str  # one of POOLING_MODES


@dataclass(frozen=True)
class Norm:
    level: Level


@dataclass(frozen=True)
class VectorMask:
    """MultiVectorMask: which document tokens MaxSim skips (the rest of its work is the engine's)."""

    skiplist_words: tuple[str, ...]


Step = DenseLayer | Pool | Norm | VectorMask


@dataclass(frozen=True)
class SentenceModules:
    """The steps after the Transformer, in order, and how embeddings compare."""

    steps: tuple[Step, ...]
    similarity: Similarity

    @property
    def multi_vector(self) -> bool:
        return self.similarity == "maxsim"

    @property
    def dense(self) -> tuple[DenseLayer, ...]:
        return tuple(step for step in self.steps if isinstance(step, DenseLayer))

    @property
    def pooling(self) -> str | None:
        return next((step.mode for step in self.steps if isinstance(step, Pool)), None)

    @property
    def normalized(self) -> bool:
        return any(isinstance(step, Norm) for step in self.steps)

    @property
    def mask(self) -> VectorMask | None:
        return next((step for step in self.steps if isinstance(step, VectorMask)), None)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def is_sentence_transformers(path: Path) -> bool:
    return (path / "modules.json").is_file()


def read_modules(name: str, path: Path) -> SentenceModules:
    """Every module of `path/modules.json` as a step, the first being the Transformer; raises `UnsupportedModule`
    naming the first module or setting that cannot be served exactly."""
    modules = read_json(path / "modules.json") or []
    settings = read_json(path / "config_sentence_transformers.json") or {}
    similarity = _similarity(name, settings, _multi_vector(modules, settings))
    steps: list[Step] = []
    pooled = False
    for position, module in enumerate(modules):
        kind = str(module.get("type", ""))
        folder = path / str(module.get("path", ""))
        short = kind.rsplit(".", 1)[-1]
        where = f"model {name!r}: module {position} ({kind}, {module.get('path') or 'the root folder'})"
        if position == 0:
            if short != "Transformer":
                raise UnsupportedModule(f"{where}: the first module must be a Transformer")
            continue
        config = read_json(folder / "config.json") or {}
        if short == "Pooling":
            steps.append(Pool(_pooling_mode(where, config)))
            pooled = True
        elif short == "Normalize":
            level = _level(where, config.get("module_input_name"), "sentence" if pooled else "tokens")
            steps.append(Norm(level))
        elif short == "Dense":
            # A multi-vector model's Dense projects every token (PyLate's always; sentence-transformers' as its
            # MultiVectorEncoder loads them), a bi-encoder's the pooled embedding.
            default: Level = "tokens" if similarity == "maxsim" and not pooled else "sentence"
            steps.append(_dense(where, folder, config, default))
        elif short == "MultiVectorMask":
            steps.append(_vector_mask(where, config))
        elif short == "LogitScore":
            continue  # an LLM reranker's head: models/resolve.py reads it
        else:
            raise UnsupportedModule(
                f"{where}: rerankd does not run this module type, so it refuses the model rather than serve it "
                "without it (supported: Transformer, Pooling, Dense, Normalize, MultiVectorMask, LogitScore)"
            )
    for key in ("truncate_dim", "default_prompt_name"):
        if settings.get(key):
            raise UnsupportedModule(
                f"model {name!r}: config_sentence_transformers.json sets {key}={settings[key]!r}, which rerankd does "
                "not apply; refused rather than served with different embeddings"
            )
    return SentenceModules(tuple(steps), similarity)


# Settings only ColBERT (PyLate, sentence-transformers' MultiVectorEncoder) folders save.
_MULTI_VECTOR_SETTINGS = ("query_length", "document_length", "do_query_expansion", "query_prefix", "skiplist_words")


def _multi_vector(modules: list[dict[str, Any]], settings: dict[str, Any]) -> bool:
    """Whether the folder is a multi-vector model, as sentence-transformers' MultiVectorEncoder reads it."""
    types = [str(module.get("type", "")) for module in modules]
    return (
        str(settings.get("similarity_fn_name", "")).lower() == "maxsim"
        or settings.get("model_type") == "ColBERT"
        or any(kind.startswith("pylate.") or kind.endswith("MultiVectorMask") for kind in types)
        or any(key in settings for key in _MULTI_VECTOR_SETTINGS)
    )


def _similarity(name: str, settings: dict[str, Any], multi_vector: bool) -> Similarity:
    if multi_vector:  # older PyLate saves name cosine; MaxSim is what their models are scored with
        return "maxsim"
    saved = str(settings.get("similarity_fn_name") or "cosine")
    if saved.lower() not in SIMILARITIES:
        raise UnsupportedModule(
            f"model {name!r}: similarity_fn_name {saved!r} is not served (supported: cosine, dot, MaxSim)"
        )
    return SIMILARITIES[saved.lower()]


def _level(where: str, input_name: Any, default: Level) -> Level:
    if input_name is None:
        return default
    levels: dict[str, Level] = {"token_embeddings": "tokens", "sentence_embedding": "sentence"}
    if input_name not in levels:
        raise UnsupportedModule(f"{where}: module_input_name {input_name!r} is not served")
    return levels[input_name]


def _pooling_mode(where: str, config: dict[str, Any]) -> str:
    """sentence-transformers' modes: `pooling_mode` (6.x), else the legacy `pooling_mode_*` flags."""
    modes = config.get("pooling_mode")
    if modes is None:
        legacy = [key for key, value in config.items() if key.startswith("pooling_mode_") and value]
        modes = [_LEGACY_POOLING.get(key, key.removeprefix("pooling_mode_")) for key in legacy] or ["mean"]
    modes = [modes] if isinstance(modes, str) else list(modes)
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise UnsupportedModule(
            f"{where}: pooling {' + '.join(map(str, modes))} is not served (one of: {', '.join(POOLING_MODES)})"
        )
    if config.get("include_prompt") is False:
        raise UnsupportedModule(f"{where}: include_prompt=false is not served")
    return modes[0]


def _dense(where: str, folder: Path, config: dict[str, Any], default: Level) -> DenseLayer:
    activation_name = str(config.get("activation_function") or "torch.nn.modules.activation.Tanh")
    if activation_name not in ACTIVATIONS:
        raise UnsupportedModule(
            f"{where}: activation {activation_name} is not served (supported: {', '.join(sorted(ACTIVATIONS))})"
        )
    weights = next((folder / file for file in WEIGHT_FILES if (folder / file).is_file()), None)
    if weights is None:
        raise UnsupportedModule(f"{where}: no weights ({' or '.join(WEIGHT_FILES)}) in {folder}")
    return DenseLayer(
        weights=weights,
        in_features=int(config["in_features"]),
        out_features=int(config["out_features"]),
        bias=bool(config.get("bias", True)),
        activation=ACTIVATIONS[activation_name],
        level=_level(where, config.get("module_input_name"), default),
        residual=bool(config.get("use_residual", False)),
    )


def _vector_mask(where: str, config: dict[str, Any]) -> VectorMask:
    tasks = config.get("skiplist_tasks") or ["document"]
    if list(tasks) != ["document"] or config.get("keep_only_token_ids"):
        raise UnsupportedModule(
            f"{where}: only a document skiplist is served (skiplist_tasks {tasks!r}, keep_only_token_ids "
            f"{config.get('keep_only_token_ids')!r})"
        )
    return VectorMask(tuple(config.get("skiplist_words") or ()))
