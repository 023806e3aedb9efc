"""The architectures whose scores are verified (a golden fixture of each in tests/test_golden_scores.py,
tests/test_golden_llm.py or tests/test_late_interaction.py), and the refusal of every other one at start-up rather
than serving unverified scores.
Bi-encoders are not restricted. README, "Supported architectures"; docs/architecture.md, "Where to add".
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

# LLM rerankers: the yes/no logits of the last position, through the model's chat template.
VERIFIED_CAUSAL: dict[str, Family] = {
    family.model_type: family
    for family in (
        Family("qwen3", "Qwen3ForCausalLM", "Qwen/Qwen3-Reranker-0.6B"),
        Family("qwen2", "Qwen2ForCausalLM", "mixedbread-ai/mxbai-rerank-base-v2"),
        Family("gemma", "GemmaForCausalLM", "BAAI/bge-reranker-v2-gemma"),
    )
}


# Late-interaction (ColBERT) bodies: the token states of the encoder, projected; the class that runs is AutoModel's.
VERIFIED_LATE: dict[str, Family] = {
    family.model_type: family
    for family in (
        Family("bert", "BertModel", "answerdotai/answerai-colbert-small-v1"),
        Family("modernbert", "ModernBertModel", "lightonai/GTE-ModernColBERT-v1"),
    )
}


class UnsupportedArchitecture(ModelNotFound):
    """The model's architecture is not one whose scores this version of rerankd has verified."""


def require_verified(name: str, config: dict[str, Any], *, causal: bool = False) -> Family:
    """The family of a cross-encoder's (or, `causal`, an LLM reranker's) config; raises `UnsupportedArchitecture`
    for any other.

    The class that runs is the family's sequence-classification class (chosen by `model_type`), so a config whose
    `architectures` names another head of a verified family (a bare `BertModel` with `--model-kind cross-encoder`)
    runs verified code; any other model type, or a head that is not sequence classification, is refused.
    """
    model_type = config.get("model_type")
    architectures = [str(arch) for arch in config.get("architectures") or []]
    family = (VERIFIED_CAUSAL if causal else VERIFIED).get(str(model_type))
    suffix = "ForCausalLM" if causal else "ForSequenceClassification"
    foreign = [arch for arch in architectures if arch.endswith(suffix)]
    if family is not None and all(arch == family.architecture for arch in foreign):
        return family
    shown = ", ".join(architectures) or "no architectures listed"
    supported = ", ".join(known.architecture for known in (*VERIFIED.values(), *VERIFIED_CAUSAL.values()))
    raise UnsupportedArchitecture(
        f"model {name!r}: architecture {shown} (model_type {model_type!r}) is not verified for "
        f"{'LLM (yes/no)' if causal else 'cross-encoder'} scoring; supported: {supported}. Its scores have not "
        "been checked against sentence-transformers, so it is refused rather than served (see README, "
        "'Supported architectures')"
    )


def require_verified_late(name: str, config: dict[str, Any]) -> Family:
    """The family of a late-interaction model's body; raises `UnsupportedArchitecture` for any other, and for
    bodies that need remote code (their own modelling files, which rerankd does not run)."""
    model_type = str(config.get("model_type"))
    if config.get("auto_map"):
        raise UnsupportedArchitecture(
            f"model {name!r}: its body needs remote code ({', '.join(sorted(config['auto_map']))} in config.json), "
            "which rerankd does not run; late-interaction bodies served: "
            + ", ".join(f"{f.model_type} ({f.example})" for f in VERIFIED_LATE.values())
        )
    if model_type not in VERIFIED_LATE:
        raise UnsupportedArchitecture(
            f"model {name!r}: model_type {model_type!r} is not verified for late-interaction (MaxSim) scoring; "
            "supported: " + ", ".join(f"{f.model_type} ({f.example})" for f in VERIFIED_LATE.values())
        )
    return VERIFIED_LATE[model_type]
