"""Build the backend the settings ask for: the one place that knows every backend class."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from rerankd.backends.base import Backend
from rerankd.backends.export import ensure_onnx
from rerankd.backends.head import HeadBackend, needs_head
from rerankd.backends.onnx import OnnxBackend
from rerankd.backends.select import choose
from rerankd.cores import available_cores
from rerankd.models import ModelSpec

if TYPE_CHECKING:
    from rerankd.config import Settings


def load_backend(spec: ModelSpec, settings: Settings) -> Backend:
    """Build the backend the settings ask for; `auto` choices are resolved by `backends.select.choose`.
    Under int8-rescore this is the int8 session; pipeline/rescore.py loads the fp32 twin."""
    if needs_head(spec):  # the body's token states from any backend, then its sentence-transformers modules
        precision = choose(settings, kind=spec.kind).precision
        body = dataclasses.replace(spec, kind="bi-encoder", pooling="tokens", normalize=False, modules=None, late=None)
        return HeadBackend(spec, load_backend(body, settings.model_copy(update={"precision": precision})))
    choice = choose(settings, kind=spec.kind)
    if spec.kind == "causal-lm" and choice.precision == "int8":
        # Measured on the golden fixtures (tests/test_golden_llm.py): dynamic int8 moved Qwen3-shaped logits by up
        # to 2.1 (Spearman 0.41 vs fp32), far from the encoders' fidelity; so it is refused, not served.
        raise ValueError(
            f"precision: int8 is not verified for LLM rerankers ({spec.name}); use fp32 on the CPU or fp16 on cuda"
        )
    threads = settings.threads or available_cores()
    if choice.backend == "onnx":  # exported once, cached
        precision = choice.scoring_precision
        model = ensure_onnx(spec, precision, settings.cache_dir)
        return OnnxBackend(spec, model, device=choice.device, precision=precision, threads=threads)
    # Not a cycle: torch is imported only when asked for, so ONNX-only servers never pay for loading it.
    from rerankd.backends.torch import TorchBackend

    return TorchBackend(spec, device=choice.device, precision=choice.precision, threads=threads)
