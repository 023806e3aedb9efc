"""Turn what the user typed (hub id, local folder, preset) into a `ModelSpec`: a local folder plus the
facts the engine needs (kind, window, score convention), read from the model's own config files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from rerankd.errors import ModelNotFound
from rerankd.models.colbert import LateInteraction, is_stanford, read_colbert
from rerankd.models.families import require_verified, require_verified_late
from rerankd.models.fixture import build_ce_fixture
from rerankd.models.presets import CE_FIXTURE_ID, PACKAGED_DEFAULT_ID, PRESETS, packaged_default_path
from rerankd.models.sentence_modules import SentenceModules, read_modules
from rerankd.models.templates import TEMPLATES, RerankTemplate

ModelKind = Literal["cross-encoder", "causal-lm", "bi-encoder", "late-interaction"]
Activation = Literal["sigmoid", "identity", "softmax"]
Pooling = Literal["mean", "cls", "max"]

# Files a reranker needs from the hub (every sentence-transformers module folder, ColBERT's artifact.metadata);
# weights are tried safetensors-first.
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.jinja", "artifact.metadata", "[0-9]_*/*"]
_SANE_MAX_LENGTH = 100_000  # tokenizers without a limit report ~1e30


@dataclass(frozen=True)
class ModelSpec:
    """A model ready to load: where it is and how to score with it."""

    name: str  # canonical id: hub id, or a local folder's name (never its path: ids are shown to clients)
    path: Path
    kind: ModelKind
    max_length: int
    revision: str  # content identity, for caches keyed by model version
    num_labels: int = 1
    activation: Activation = "sigmoid"
    pooling: Pooling = "mean"
    normalize: bool = True
    # causal-lm: the score is logit[true] - logit[false] at the last position (logit[true] alone without false).
    true_token_id: int | None = None
    false_token_id: int | None = None
    chat_template: str | None = None  # causal-lm: a preset's prompt, for folders without a reranking template
    # bi-encoders and late-interaction: the sentence-transformers modules after the body (Dense, Pooling, ...)
    modules: SentenceModules | None = None
    late: LateInteraction | None = None  # late-interaction: queries, documents and their lengths
    aliases: tuple[str, ...] = field(default=())
    local_names: tuple[str, ...] = ()  # names it answers to but never shows: a local folder's path as given

    @property
    def short_name(self) -> str:
        return self.name.rstrip("/").rsplit("/", 1)[-1]

    @property
    def pairs(self) -> bool:
        """Whether the model reads a query and a document together (cross-encoders, LLM rerankers)."""
        return self.kind in ("cross-encoder", "causal-lm")

    @property
    def similarity(self) -> str:
        """How a bi-encoder compares embeddings (cosine or dot); late-interaction models score by MaxSim."""
        return self.modules.similarity if self.modules else "cosine"


def resolve_model(name: str, *, kind: ModelKind | Literal["auto"] = "auto", cache_dir: Path | None = None) -> ModelSpec:
    """Resolve a preset name, a local folder or a hub id to a `ModelSpec`.

    Raises `ModelNotFound` with the reason when the model is neither on disk nor downloadable.
    """
    preset = PRESETS.get(name)
    model_id = preset.model_id if preset else name
    aliases = {name, model_id} if preset else {name}
    local_names: tuple[str, ...] = ()

    if model_id == PACKAGED_DEFAULT_ID:
        path = packaged_default_path()
    elif model_id == CE_FIXTURE_ID:
        path = build_ce_fixture(cache_dir)
    elif Path(model_id).expanduser().is_dir():
        path = Path(model_id).expanduser().resolve()
        # Its id is the folder's name, so answers, /v1/models and /metrics do not show the server's file system.
        model_id, local_names, aliases = path.name, (name,), set()
    else:
        path = _download(model_id)

    template = TEMPLATES[preset.template] if preset and preset.template else None
    spec = inspect_model(model_id, path, kind=kind, template=template)
    aliases.add(spec.short_name)
    return ModelSpec(**{**spec.__dict__, "aliases": tuple(sorted(aliases | {spec.name})), "local_names": local_names})


def inspect_model(
    name: str, path: Path, *, kind: ModelKind | Literal["auto"] = "auto", template: RerankTemplate | None = None
) -> ModelSpec:
    """Read kind, window and score convention from a model folder. `template`: an LLM reranker's prompt for a
    folder that is not in sentence-transformers' CrossEncoder format (the folder's own wins where it is)."""
    config = _read_json(path / "config.json")
    if config is None:
        raise ModelNotFound(f"model {name!r}: {path} has no config.json, so it is not a Hugging Face model folder")
    if kind == "auto":
        kind = _detect_kind(name, path, config)
    if kind in ("cross-encoder", "causal-lm"):  # unverified architectures are refused, not served unchecked
        require_verified(name, config, causal=kind == "causal-lm")
    elif kind == "late-interaction":
        require_verified_late(name, config)
    num_labels = _num_labels(config) if kind == "cross-encoder" else 1
    base = dict(name=name, path=path, kind=kind, revision=_revision(path), num_labels=num_labels)
    if kind == "cross-encoder":
        return ModelSpec(**base, max_length=_window(path, config), activation=_activation(path, config, num_labels))
    if kind == "causal-lm":
        template = None if _module_config(path, "LogitScore") is not None else template
        true_id, false_id = _answer_tokens(name, path, template)
        return ModelSpec(
            **base,
            max_length=_st_window(path, config),
            activation=_activation(path, config, 1),
            true_token_id=true_id,
            false_token_id=false_id,
            chat_template=template.chat_template if template else None,
        )
    if kind == "late-interaction":
        modules, late = read_colbert(name, path, config)
        window = _st_window(path, config)
        late = replace(late, document_length=min(int(late.document_length or window), window), window=window)
        return ModelSpec(**base, max_length=late.document_length, modules=modules, late=late, normalize=False)
    if not (path / "modules.json").is_file():
        return ModelSpec(**base, max_length=_st_window(path, config), normalize=False)  # a bare body: mean pooling
    modules = read_modules(name, path)
    if modules.multi_vector:
        raise ModelNotFound(f"model {name!r}: a multi-vector (MaxSim) model; serve it as late-interaction")
    return ModelSpec(
        **base,
        max_length=_st_window(path, config),
        pooling=modules.pooling or "mean",  # type: ignore[arg-type]
        normalize=modules.normalized,
        modules=modules,
    )


def _detect_kind(name: str, path: Path, config: dict[str, Any]) -> ModelKind:
    """sentence-transformers' reading: a `LogitScore` module or a `*ForCausalLM` config is an LLM reranker; a
    classification head a cross-encoder; other sentence-transformers folders bi-encoders."""
    architectures = config.get("architectures") or []
    if is_stanford(config) or ((path / "modules.json").is_file() and read_modules(name, path).multi_vector):
        return "late-interaction"
    if _module_config(path, "LogitScore") is not None or any(arch.endswith("ForCausalLM") for arch in architectures):
        return "causal-lm"
    if any(arch.endswith("ForSequenceClassification") for arch in architectures):
        return "cross-encoder"
    if (path / "modules.json").is_file():
        return "bi-encoder"
    raise ModelNotFound(
        f"model {name!r}: neither a sequence-classification head, a causal LM, a ColBERT nor sentence-transformers "
        "modules found; pass --model-kind cross-encoder|causal-lm|bi-encoder|late-interaction"
    )


def _module_config(path: Path, kind: str) -> dict[str, Any] | None:
    """The config of the folder's first sentence-transformers module of this kind (`LogitScore`, `Pooling`), if
    it has one ({} for a module without a config)."""
    for module in _read_json(path / "modules.json") or []:
        if str(module.get("type", "")).endswith(kind):
            return _read_json(path / module.get("path", "") / "config.json") or {}
    return None


def _answer_tokens(name: str, path: Path, template: RerankTemplate | None) -> tuple[int, int | None]:
    """The true/false token ids: the `LogitScore` module's, else the template's tokens, else sentence-transformers'
    default "yes"/"no"."""
    saved = _module_config(path, "LogitScore")
    if saved is not None and saved.get("true_token_id") is not None:
        false_id = saved.get("false_token_id")
        return int(saved["true_token_id"]), None if false_id is None else int(false_id)
    from tokenizers import Tokenizer  # only LLM rerankers without a LogitScore module need the vocabulary here

    tokens = (template.true_token, template.false_token) if template else ("yes", "no")
    vocabulary = path / "tokenizer.json"
    tokenizer = Tokenizer.from_file(str(vocabulary)) if vocabulary.is_file() else None
    ids = [tokenizer.token_to_id(token) if tokenizer and token else None for token in tokens]
    if ids[0] is None or (tokens[1] is not None and ids[1] is None):
        raise ModelNotFound(
            f"model {name!r}: an LLM reranker needs a 1_LogitScore module naming its true/false tokens, or a "
            f"tokenizer.json with the tokens {' and '.join(repr(t) for t in tokens if t)}; neither was found"
        )
    return int(ids[0]), None if ids[1] is None else int(ids[1])


def _st_window(path: Path, config: dict[str, Any]) -> int:
    """The window, capped by sentence-transformers' `max_seq_length` where the folder sets one."""
    st_config = _read_json(path / "sentence_bert_config.json") or {}
    return min(_window(path, config), int(st_config.get("max_seq_length") or _SANE_MAX_LENGTH))


def _download(model_id: str) -> Path:
    """Fetch a hub model into the standard Hugging Face cache (or find it there when offline)."""
    if model_id.count("/") != 1 or model_id.startswith((".", "/")):
        raise ModelNotFound(
            f"model {model_id!r}: not a local folder, a preset ({', '.join(sorted(PRESETS))}) or a hub id (org/name)"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        path = Path(snapshot_download(model_id, allow_patterns=[*_HUB_FILES, "*.safetensors"]))
        if not any(path.glob("*.safetensors")):
            path = Path(snapshot_download(model_id, allow_patterns=[*_HUB_FILES, "*.bin"]))
    except RepositoryNotFoundError as exc:
        raise ModelNotFound(f"model {model_id!r}: no such repository on the Hugging Face hub") from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        raise ModelNotFound(
            f"model {model_id!r}: not in the local Hugging Face cache and the hub could not be reached ({exc})"
        ) from exc
    return path


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _window(path: Path, config: dict[str, Any]) -> int:
    """The longest input the model accepts: the tokenizer's limit, capped by the position embeddings."""
    limits = []
    tokenizer_config = _read_json(path / "tokenizer_config.json") or {}
    if 0 < int(tokenizer_config.get("model_max_length") or 0) < _SANE_MAX_LENGTH:
        limits.append(int(tokenizer_config["model_max_length"]))
    if positions := config.get("max_position_embeddings"):
        # RoBERTa-family models reserve two positions for the padding offset.
        offset = 2 if config.get("model_type") in {"roberta", "xlm-roberta", "camembert"} else 0
        limits.append(int(positions) - offset)
    return min(limits) if limits else 512


def _num_labels(config: dict[str, Any]) -> int:
    """transformers' own reading: the `id2label` map's length, else `num_labels`, else its default of two."""
    from transformers import PretrainedConfig  # here, not at the top: it loads torch, which resolving must not

    return PretrainedConfig.from_dict(config).num_labels


def _activation(path: Path, config: dict[str, Any], num_labels: int) -> Activation:
    """sentence-transformers' convention: the saved activation, else sigmoid for one logit, softmax otherwise."""
    saved = (
        (config.get("sentence_transformers") or {}).get("activation_fn")
        or config.get("sbert_ce_default_activation_function")
        or (_read_json(path / "config_sentence_transformers.json") or {}).get("activation_fn")
    )
    if saved:
        if saved.endswith("Identity"):
            return "identity"
        if saved.endswith("Sigmoid"):
            return "sigmoid"
    return "sigmoid" if num_labels == 1 else "softmax"


def _revision(path: Path) -> str:
    """A hub snapshot's commit hash, else a hash of the config and the weights' sizes and times."""
    if path.parent.name == "snapshots":
        return path.name[:12]
    digest = hashlib.sha1()
    for item in sorted([*path.glob("*"), *path.glob("[0-9]_*/*")]):  # module folders hold weights too (Dense)
        if item.is_file() and (item.suffix in {".json", ".safetensors", ".bin"}):
            stat = item.stat()
            digest.update(f"{item.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]
