"""Build the backend the settings ask for: the one place that knows every backend class."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rerankd.backends.base import Backend
from rerankd.backends.onnx import OnnxBackend
from rerankd.backends.select import choose
from rerankd.cores import available_cores
from rerankd.models import ModelSpec

if TYPE_CHECKING:
    from rerankd.config import Settings


def load_backend(spec: ModelSpec, settings: Settings) -> Backend:
    """Build the backend the settings ask for; `auto` choices are resolved by `backends.select.choose`."""
    choice = choose(settings)
    threads = settings.threads or available_cores()
    if choice.backend == "onnx":
        return OnnxBackend.load(
            spec, device=choice.device, precision=choice.precision, threads=threads, cache_dir=settings.cache_dir
        )
    # Not a cycle: torch is imported only when asked for, so ONNX-only servers never pay for loading it.
    from rerankd.backends.torch import TorchBackend

    return TorchBackend(spec, device=choice.device, precision=choice.precision, threads=threads)
