"""The cross-encoder architectures whose scores are verified, and the refusal of every other one.

A family is listed here only when tests/test_golden_scores.py builds a tiny fixture of it and checks rerankd's
scores over HTTP against `sentence_transformers.CrossEncoder.predict` on every backend. An architecture outside
this list is refused at start-up rather than served with unverified scores; to add one, add it to that matrix and
here. Bi-encoders (sentence-transformers models) are not restricted: their scores are cosines of pooled embeddings
that every backend computes the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rerankd.errors import ModelNotFound


@dataclass(frozen=True)
class Family:
    """One verified architecture: the `model_type` in config.json and its sequence-classification class."""

    model_type: str
    architecture: str
    example: str  # a public reranker of this family
    backends: tuple[str, ...] = ("torch", "onnx")  # backends whose scores the golden suite checks


VERIFIED: dict[str, Family] = {
    family.model_type: family
    for family in (
        Family("bert", "BertForSequenceClassification", "cross-encoder/ms-marco-MiniLM-L6-v2"),
        Family("xlm-roberta", "XLMRobertaForSequenceClassification", "BAAI/bge-reranker-v2-m3"),
        Family("modernbert", "ModernBertForSequenceClassification", "Alibaba-NLP/gte-reranker-modernbert-base"),
        Family("deberta-v2", "DebertaV2ForSequenceClassification", "mixedbread-ai/mxbai-rerank-xsmall-v1"),
        Family("electra", "ElectraForSequenceClassification", "cross-encoder/ms-marco-electra-base"),
    )
}


class UnsupportedArchitecture(ModelNotFound):
    """The model's architecture is not one whose scores this version of rerankd has verified."""


def supported() -> str:
    return ", ".join(family.architecture for family in VERIFIED.values())


def require_verified(name: str, config: dict[str, Any]) -> Family:
    """The family of a cross-encoder's config; raises `UnsupportedArchitecture` for any other.

    The class that runs is the family's sequence-classification class (chosen by `model_type`), so a config whose
    `architectures` names another head of a verified family (a bare `BertModel` with `--model-kind cross-encoder`)
    runs verified code; any other model type, or a head that is not sequence classification, is refused.
    """
    model_type = config.get("model_type")
    architectures = [str(arch) for arch in config.get("architectures") or []]
    family = VERIFIED.get(str(model_type))
    foreign = [arch for arch in architectures if arch.endswith("ForSequenceClassification")]
    if family is not None and all(arch == family.architecture for arch in foreign):
        return family
    shown = ", ".join(architectures) or "no architectures listed"
    raise UnsupportedArchitecture(
        f"model {name!r}: architecture {shown} (model_type {model_type!r}) is not verified for cross-encoder "
        f"scoring; supported: {supported()}. Its scores have not been checked against sentence-transformers, "
        "so it is refused rather than served (see README, 'Supported architectures')"
    )
