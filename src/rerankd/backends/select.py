"""Resolve `auto` settings into one concrete engine: backend, device and precision (and, under int8-rescore, the
precision of the re-scored head), with the reason why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rerankd.backends.fidelity import FIDELITY, LLM_BACKEND_REASON, RESCORABLE_KINDS, fastest_faithful
from rerankd.cpu import Cpu, this_cpu

if TYPE_CHECKING:
    from rerankd.config import Settings

# int8 for every document, then the head of the ranking again at a faithful precision (pipeline/rescore.py).
INT8_RESCORE = "int8-rescore"
# What each backend runs; the CPU and the model kind narrow it further below.
BACKEND_PRECISIONS = {
    "onnx": ("fp32", "int8", INT8_RESCORE, "fp16"),
    "openvino": ("fp32", "bf16", "int8", INT8_RESCORE),
    "torch": ("fp32", "bf16", "fp16"),
}


@dataclass(frozen=True)
class Choice:
    """The engine a model runs on, and why (for the start-up line and the logs)."""

    backend: str
    device: str
    precision: str
    reason: str
    head_precision: str | None = None  # int8-rescore: what the head is scored again at (fp32 or bf16)

    def __str__(self) -> str:
        return f"{self.backend}/{self.device}/{self.label} ({self.reason})"

    @property
    def label(self) -> str:
        """The precision as /v1/models and the logs show it: int8-rescore names its head's precision."""
        return f"int8+{self.head_precision}-head" if self.head_precision else self.precision

    @property
    def scoring_precision(self) -> str:
        """The precision every document is scored at (int8-rescore's head engine is loaded beside it)."""
        return "int8" if self.precision == INT8_RESCORE else self.precision

    @property
    def head(self) -> Choice | None:
        """The engine that scores int8-rescore's head again: the same backend at the head's precision."""
        if self.head_precision is None:
            return None
        return Choice(self.backend, self.device, self.head_precision, "the re-scored head")


def cuda_available(backend: str) -> bool:
    """Whether `backend` can run on an NVIDIA GPU in this process."""
    if backend == "onnx":
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if backend == "openvino":
        return False  # OpenVINO runs on the CPU here (its GPU plugin is Intel's, not CUDA)
    import torch

    return bool(torch.cuda.is_available())


def choose(settings: Settings, flags: frozenset[str] | None = None, *, kind: str = "cross-encoder") -> Choice:
    """Concrete engine for `settings` and a model of `kind` on this CPU (`flags`: another CPU's, for tests);
    raises ValueError, naming the setting, for combinations that cannot run or would run emulated."""
    cpu = this_cpu() if flags is None else Cpu("given", flags)
    device = _device(settings)
    if device == "cpu" and settings.backend == "auto" and settings.precision == "auto":
        measured = fastest_faithful(cpu, kind)
        choice = Choice(measured.backend, "cpu", measured.precision, f"auto: {measured.reason}", measured.head)
    else:
        choice = _configured(settings, device, kind, cpu)
    _check(choice, kind, cpu)
    return choice


def _device(settings: Settings) -> str:
    backend = "onnx" if settings.backend == "auto" else settings.backend  # what would run on a GPU
    if settings.device == "cuda" and not cuda_available(backend):
        raise ValueError(f"device: cuda was asked for, but the {backend} backend sees no usable NVIDIA GPU")
    if settings.device != "auto":
        return settings.device
    return "cuda" if cuda_available(backend) else "cpu"


def _configured(settings: Settings, device: str, kind: str, cpu: Cpu) -> Choice:
    """A choice with at least one of backend and precision configured (or on a GPU)."""
    precision, reason = settings.precision, "as configured"
    if precision == "auto":
        if device == "cuda":
            precision, reason = "fp16", "auto: GPU"
        elif settings.backend == "auto" or settings.backend == "onnx" or kind not in FIDELITY:
            precision, reason = "fp32", "auto: exact scores on the CPU"
        else:  # a backend was named: its fastest faithful precision on this CPU
            measured = fastest_faithful(cpu, kind, backend=settings.backend)
            precision, reason = measured.precision, f"auto: {measured.reason}"
    backend = settings.backend
    if backend == "auto":
        backend = "onnx"
        if kind == "causal-lm" and device == "cpu" and precision in ("fp32", "bf16"):
            backend, reason = "torch", f"{reason}; {LLM_BACKEND_REASON}"
        elif precision == "bf16":
            backend = "openvino"  # encoders (an LLM reranker took torch above)
    head = None
    if precision == INT8_RESCORE:
        head = settings.rescore_head_precision
        if head == "auto":
            head = "bf16" if backend == "openvino" and cpu.bf16 else "fp32"
    return Choice(backend, device, precision, reason, head)


def _check(choice: Choice, kind: str, cpu: Cpu) -> None:
    backend, device, precision = choice.backend, choice.device, choice.precision
    if precision not in BACKEND_PRECISIONS[backend]:
        runs = ", ".join(BACKEND_PRECISIONS[backend])
        if precision in ("int8", INT8_RESCORE):
            raise ValueError(
                f"precision: {precision} needs --backend onnx or openvino (the {backend} backend runs {runs})"
            )
        raise ValueError(f"precision: the {backend} backend runs {runs}, not {precision}")
    if precision in ("int8", INT8_RESCORE, "bf16") and device == "cuda":
        raise ValueError(f"precision: {precision} runs on the CPU only; use fp16 on cuda")
    if precision == "fp16" and device != "cuda":
        raise ValueError("precision: fp16 needs --device cuda (CPUs run fp32, bf16 or int8)")
    if backend == "openvino" and kind == "causal-lm":
        raise ValueError(
            "backend: openvino serves encoders (cross-encoders, bi-encoders, late interaction); this model is a "
            "causal-lm: use torch (it reuses an LLM prompt's shared prefix) or onnx"
        )
    if precision == INT8_RESCORE and kind not in RESCORABLE_KINDS:
        raise ValueError(
            f"precision: {INT8_RESCORE} re-scores the head of an encoder's ranking (cross-encoder or bi-encoder); "
            f"this model is a {kind}, whose int8 is not verified: use fp32"
        )
    if choice.head_precision not in (None, "fp32", "bf16"):
        raise ValueError(f"rescore_head_precision: fp32 or bf16, not {choice.head_precision}")
    if choice.head_precision == "bf16" and backend != "openvino":
        raise ValueError("rescore_head_precision: bf16 needs --backend openvino (ONNX Runtime re-scores in fp32)")
    if device == "cpu" and "bf16" in (precision, choice.head_precision) and not cpu.bf16:
        raise ValueError(
            "precision: bf16 needs a CPU with bf16 arithmetic (avx512_bf16 or amx_bf16); this one has neither, so "
            "bf16 would be emulated, slower than fp32: use fp32 or int8-rescore"
        )
