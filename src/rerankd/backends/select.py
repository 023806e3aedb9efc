"""Resolve `auto` settings into one concrete engine: backend, device and precision, with the reason why."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rerankd.config import Settings

# CPU flags that mean int8 dot products in hardware: x86 VNNI (AVX-512 or AVX) and Arm's dot-product extension.
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})


@dataclass(frozen=True)
class Choice:
    """The engine a model runs on, and why (for the start-up line and the logs)."""

    backend: str
    device: str
    precision: str
    reason: str

    def __str__(self) -> str:
        return f"{self.backend}/{self.device}/{self.precision} ({self.reason})"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags (Linux); empty where /proc/cpuinfo is missing."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in {"flags", "Features"}:
            return frozenset(value.split())
    return frozenset()


def int8_dot_products(flags: frozenset[str] | None = None) -> bool:
    """Whether int8 matrix products run on dedicated dot-product instructions here."""
    return bool(INT8_DOT_FLAGS & (cpu_flags() if flags is None else flags))


def cuda_available(backend: str) -> bool:
    """Whether `backend` can run on an NVIDIA GPU in this process."""
    if backend == "onnx":
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    import torch

    return bool(torch.cuda.is_available())


def choose(settings: Settings, flags: frozenset[str] | None = None) -> Choice:
    """Concrete backend/device/precision for `settings`; raises ValueError for combinations that cannot run."""
    backend = "onnx" if settings.backend == "auto" else settings.backend
    if settings.device == "auto":
        device = "cuda" if cuda_available(backend) else "cpu"
    else:
        device = settings.device
        if device == "cuda" and not cuda_available(backend):
            raise ValueError(f"device: cuda was asked for, but the {backend} backend sees no usable NVIDIA GPU")

    if settings.precision != "auto":
        precision, reason = settings.precision, "as configured"
    elif device == "cuda":
        precision, reason = "fp16", "auto: GPU"
    else:
        # int8 stays opt-in: on debian-minilm-ce it missed the fidelity targets (bench/fidelity.py, 30 queries x
        # BM25 top 100: Spearman 0.958 < 0.98, top-10 overlap 0.897 < 0.9), though it was 1.4-1.7x faster. No pure
        # quantization recipe fixed that on an AVX2 Zen 3 (bench/int8_fidelity.py: static in-domain calibration,
        # layers kept in fp32: top-10 overlap 0.64-0.88); fp32 re-scoring of an int8 head was faithful there but no
        # faster than fp32 (int8 only ~1.45x fp32 without VNNI).
        fast_int8 = backend == "onnx" and int8_dot_products(flags)
        hint = "; --precision int8 is faster here (VNNI) but less faithful" if fast_int8 else ""
        precision, reason = "fp32", f"auto: exact scores on the CPU{hint}"

    if precision == "int8" and backend != "onnx":
        raise ValueError("precision: int8 needs --backend onnx (the torch backend runs fp32 or fp16)")
    if precision == "int8" and device == "cuda":
        raise ValueError("precision: int8 runs on the CPU only; use fp16 on cuda")
    if precision == "fp16" and device != "cuda":
        raise ValueError("precision: fp16 needs --device cuda (CPUs run fp32 or int8)")
    return Choice(backend, device, precision, reason)
