"""Build the backend the settings ask for: the one place that knows every backend class."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from rerankd.backends.base import Backend
from rerankd.backends.export import ensure_onnx
from rerankd.backends.head import HeadBackend, needs_head
from rerankd.backends.select import Choice, choose
from rerankd.cores import available_cores, leave_cores_to_the_runtime
from rerankd.cpu import this_cpu
from rerankd.models import ModelSpec

if TYPE_CHECKING:
    from rerankd.config import Settings


def load_backend(spec: ModelSpec, settings: Settings, choice: Choice | None = None) -> Backend:
    """Build `choice` (default: what `backends.select.choose` resolves the settings to). Under int8-rescore this is
    the int8 engine; pipeline/rescore.py loads the head's engine from `choice.head`."""
    choice = choice or choose(settings, kind=spec.kind)
    if needs_head(spec):  # the body's token states from any backend, then its sentence-transformers modules
        body = dataclasses.replace(spec, kind="bi-encoder", pooling="tokens", normalize=False, modules=None, late=None)
        return HeadBackend(spec, load_backend(body, settings, choice))
    if spec.kind == "causal-lm" and choice.precision == "int8":
        # Measured on the golden fixtures (tests/test_golden_llm.py): dynamic int8 moved Qwen3-shaped logits by up
        # to 2.1 (Spearman 0.41 vs fp32), far from the encoders' fidelity; so it is refused, not served.
        raise ValueError(
            f"precision: int8 is not verified for LLM rerankers ({spec.name}); use fp32 (or bf16) on the CPU or fp16 "
            "on cuda"
        )
    threads = settings.threads or available_cores()
    leave_cores_to_the_runtime()
    precision = choice.scoring_precision
    if choice.backend == "onnx":  # exported once, cached
        from rerankd.backends.onnx import OnnxBackend

        model = ensure_onnx(spec, precision, settings.cache_dir)
        return OnnxBackend(spec, model, device=choice.device, precision=precision, threads=threads)
    if choice.backend == "openvino":  # reads the fp32 ONNX export; int8 is calibrated from it once, cached
        from rerankd.backends.openvino import OpenVinoBackend

        model = ensure_onnx(spec, "fp32", settings.cache_dir)
        floats = "bf16" if this_cpu().bf16 else "fp32"  # an int8 graph's float operations (OpenVINO's own default)
        return OpenVinoBackend(
            spec, model, precision=precision, threads=threads, cache_dir=settings.cache_dir, float_precision=floats
        )
    # Not a cycle: torch is imported only when asked for, so ONNX-only servers never pay for loading it.
    from rerankd.backends.torch import TorchBackend

    return TorchBackend(spec, device=choice.device, precision=precision, threads=threads)
