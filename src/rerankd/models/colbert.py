"""ColBERT (late-interaction) settings from a model folder, in either layout, read as sentence-transformers'
MultiVectorEncoder reads them (it equals PyLate's own scoring):

- PyLate / sentence-transformers: `modules.json` (Transformer + Dense, maybe MultiVectorMask and Normalize) and
  `config_sentence_transformers.json` with `query_prefix`, `document_prefix`, `query_length`, `document_length`,
  `do_query_expansion`, `attend_to_expansion_tokens`, `skiplist_words`.
- Stanford ColBERT: `config.json` naming `HF_ColBERT`, the projection as `linear.weight` beside the body's
  weights (no bias), and `artifact.metadata` with the markers, lengths and punctuation masking.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rerankd.models.sentence_modules import (
    WEIGHT_FILES,
    DenseLayer,
    Norm,
    SentenceModules,
    UnsupportedModule,
    VectorMask,
    read_json,
    read_modules,
)

STANFORD_ARCHITECTURE = "HF_ColBERT"
DEFAULT_QUERY_LENGTH = 32  # classic ColBERT's pad target, the default of both layouts


@dataclass(frozen=True)
class LateInteraction:
    """How queries and documents become token vectors. Lengths count special tokens and the prefix marker."""

    query_prefix: str
    document_prefix: str
    query_length: int
    document_length: int | None  # None: the model's window
    expansion: bool  # pad queries to query_length with the mask token, which MaxSim scores
    attend_to_expansion: bool  # whether the encoder's attention sees those mask tokens
    skiplist_words: tuple[str, ...]  # document tokens MaxSim skips (punctuation, by default)
    layout: str  # "pylate" or "stanford", for the start-up line
    window: int = 512  # the body's own limit: longer queries are refused, shorter ones cut to query_length


def is_stanford(config: dict[str, Any]) -> bool:
    return STANFORD_ARCHITECTURE in (config.get("architectures") or [])


def read_colbert(name: str, path: Path, config: dict[str, Any]) -> tuple[SentenceModules, LateInteraction]:
    """The projection steps and the settings of a ColBERT folder; raises `UnsupportedModule` for what cannot be
    served exactly."""
    if is_stanford(config):
        return _stanford(name, path)
    modules = read_modules(name, path)
    settings = read_json(path / "config_sentence_transformers.json") or {}
    body = read_json(path / "sentence_bert_config.json") or {}  # the Transformer's own (native saves)
    steps = modules.steps
    if modules.mask is None:
        # PyLate's saves list only Transformer + Dense: masking and normalising were part of its model class. Its
        # punctuation skiplist is the default where the save has PyLate's markers and no list of its own.
        skiplist = settings.get("skiplist_words")
        if skiplist is None:
            marked = "query_prefix" in settings or "document_prefix" in settings
            skiplist = string.punctuation if marked else ()
        steps = (*steps, VectorMask(tuple(skiplist)), Norm("tokens"))
    if modules.pooling is not None:
        raise UnsupportedModule(f"model {name!r}: a multi-vector model with a Pooling module is not served")
    expansion = body.get("query_expansion", settings.get("query_expansion", "unset"))
    query_length = body.get("query_length") or settings.get("query_length")
    if expansion == "unset":  # PyLate's flat flags: expansion on unless switched off
        on = settings.get("do_query_expansion") is not False
        attend = bool(settings.get("attend_to_expansion_tokens", settings.get("attend_to_mask_tokens")))
        length = query_length or DEFAULT_QUERY_LENGTH
        expansion = {"strategy": "fixed", "attend": attend, "length": length} if on else None
    if expansion is not None:
        if expansion.get("strategy") != "fixed" or expansion.get("token"):
            raise UnsupportedModule(f"model {name!r}: query_expansion {expansion!r} is not served (fixed, mask token)")
        query_length = int(expansion["length"])
    prompts = dict(settings.get("prompts") or {})
    if prompts.get("query") is not None and settings.get("query_prefix"):
        # MultiVectorEncoder: the marker first, then the saved prompt text.
        prompts["query"] = settings["query_prefix"] + prompts["query"].removeprefix(settings["query_prefix"])
    if prompts.get("document") is not None and settings.get("document_prefix"):
        prompts["document"] = settings["document_prefix"] + prompts["document"].removeprefix(
            settings["document_prefix"]
        )
    late = LateInteraction(
        query_prefix=prompts.get("query") or settings.get("query_prefix") or "",
        document_prefix=prompts.get("document") or settings.get("document_prefix") or "",
        query_length=int(query_length or DEFAULT_QUERY_LENGTH),
        document_length=body.get("document_length") or settings.get("document_length"),
        expansion=expansion is not None,
        attend_to_expansion=bool(expansion and expansion.get("attend")),
        skiplist_words=next((step.skiplist_words for step in steps if isinstance(step, VectorMask)), ()),
        layout="pylate",
    )
    return SentenceModules(steps, "maxsim"), late


def _stanford(name: str, path: Path) -> tuple[SentenceModules, LateInteraction]:
    metadata = read_json(path / "artifact.metadata") or {}
    if metadata.get("similarity", "cosine") != "cosine":
        raise UnsupportedModule(
            f"model {name!r}: artifact.metadata similarity {metadata['similarity']!r} is not served (cosine MaxSim)"
        )
    weights = next((path / file for file in WEIGHT_FILES if (path / file).is_file()), None)
    if weights is None:
        raise UnsupportedModule(f"model {name!r}: a Stanford ColBERT folder needs {' or '.join(WEIGHT_FILES)}")
    dim = int(metadata.get("dim") or 128)
    hidden = int((read_json(path / "config.json") or {}).get("hidden_size") or 768)
    projection = DenseLayer(weights, hidden, dim, bias=False, activation="identity", level="tokens")
    punctuation = tuple(string.punctuation) if metadata.get("mask_punctuation", True) else ()
    late = LateInteraction(
        query_prefix=(metadata.get("query_token_id") or "[unused0]") + " ",
        document_prefix=(metadata.get("doc_token_id") or "[unused1]") + " ",
        query_length=int(metadata.get("query_maxlen") or DEFAULT_QUERY_LENGTH),
        document_length=metadata.get("doc_maxlen"),
        expansion=True,  # Stanford ColBERT always expands queries with [MASK]
        attend_to_expansion=bool(metadata.get("attend_to_mask_tokens")),
        skiplist_words=punctuation,
        layout="stanford",
    )
    steps = (projection, VectorMask(punctuation), Norm("tokens"))
    return SentenceModules(steps, "maxsim"), late
