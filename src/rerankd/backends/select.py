"""Resolve `auto` settings into one concrete engine: backend, device and precision, with the reason why."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rerankd.config import Settings

# CPU flags that mean int8 dot products in hardware: x86 VNNI (AVX-512 or AVX) and Arm's dot-product extension.
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})

# int8 for every document, then fp32 for the head of the ranking (pipeline/rescore.py): two ONNX sessions.
INT8_RESCORE = "int8-rescore"
# The encoders it serves; an LLM reranker's int8 is refused outright (backends/load.py).
RESCORABLE_KINDS = frozenset({"cross-encoder", "bi-encoder"})


@dataclass(frozen=True)
class Choice:
    """The engine a model runs on, and why (for the start-up line and the logs)."""

    backend: str
    device: str
    precision: str
    reason: str

    def __str__(self) -> str:
        return f"{self.backend}/{self.device}/{self.precision} ({self.reason})"

    @property
    def scoring_precision(self) -> str:
        """The precision every document is scored at (int8-rescore's fp32 twin is loaded beside it)."""
        return "int8" if self.precision == INT8_RESCORE else self.precision


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


def cuda_available(backend: str) -> bool:
    """Whether `backend` can run on an NVIDIA GPU in this process."""
    if backend == "onnx":
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    import torch

    return bool(torch.cuda.is_available())


def choose(settings: Settings, flags: frozenset[str] | None = None, *, kind: str = "cross-encoder") -> Choice:
    """Concrete backend/device/precision for `settings` and a model of `kind`; raises ValueError for combinations
    that cannot run."""
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
    elif backend == "onnx" and kind in RESCORABLE_KINDS and INT8_DOT_FLAGS & (cpu_flags() if flags is None else flags):
        # Pure int8 is not faithful (bench/results/int8_fidelity_100.json: top-10 overlap 0.881 vs fp32 on
        # debian-minilm-ce; static and keep-layers-in-fp32 recipes no better); int8 for all + fp32 for the head is
        # (top-10 0.995, NDCG@10 delta 0.000), and with int8 dot products int8 is ~2.1x fp32 (issue 12's Zen 4
        # table), so the pair wins there.
        # Bi-encoders too: the same encoder, quantized the same way, and their head is re-scored the same way.
        precision, reason = INT8_RESCORE, "auto: int8 dot products here; int8 for every document, fp32 for the head"
    else:
        # Without int8 dot products (AVX2) int8 is only ~1.45x fp32, and int8-rescore 1.23x (one quiet run,
        # bench/results/throughput-peers.json): not worth, by default, a second model in memory, a second warm-up
        # and int8 scores below the head. It stays the opt-in there (README, Speed and fidelity).
        # LLM rerankers have no faithful int8 path.
        precision, reason = "fp32", "auto: exact scores on the CPU"

    if settings.backend == "auto" and kind == "causal-lm" and device == "cpu" and precision == "fp32":
        # torch runs a batch's shared prompt prefix (template + instruction + query) once, the ONNX graph every prompt
        # in full: 1.39x onnx at 100 documents (bench/results/llm_prefix.json, Qwen3-0.6B width at 4 layers).
        backend, reason = "torch", f"{reason}; torch for LLM rerankers on the CPU: it reuses the shared prompt prefix"
    if precision in ("int8", INT8_RESCORE) and backend != "onnx":
        raise ValueError(f"precision: {precision} needs --backend onnx (the torch backend runs fp32 or fp16)")
    if precision in ("int8", INT8_RESCORE) and device == "cuda":
        raise ValueError(f"precision: {precision} runs on the CPU only; use fp16 on cuda")
    if precision == INT8_RESCORE and kind not in RESCORABLE_KINDS:
        raise ValueError(
            f"precision: {INT8_RESCORE} re-scores the head of an encoder's ranking (cross-encoder or bi-encoder) in "
            f"fp32; this model is a {kind}, whose int8 is not verified: use fp32"
        )
    if precision == "fp16" and device != "cuda":
        raise ValueError("precision: fp16 needs --device cuda (CPUs run fp32 or int8)")
    return Choice(backend, device, precision, reason)
