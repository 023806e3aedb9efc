"""What `auto` runs on a CPU: the fastest engine whose measured fidelity to fp32 meets the bar, for this CPU's
features and the model's kind.

The tables come from measurements, each naming its results file: speed from `bench/cpu_engines.py`
(docs/s of one length-sorted 300-document request, interleaved rounds in one run, per CPU class), fidelity from
`bench/int8_fidelity.py` (100 Debian dev queries x BM25 top 100, vs ONNX Runtime fp32: top-10 overlap and NDCG@10).
An engine not measured faithful for a kind is never picked for it, however fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from rerankd.cpu import Cpu

# The bar an encoder's engine must meet against fp32 to be a default.
TOP10_OVERLAP_MIN = 0.95
NDCG_DELTA_MAX = 0.005
# LLM rerankers: rank agreement of the yes/no logit with fp32 (their golden fixtures have no relevance labels).
LLM_SPEARMAN_MIN = 0.99
# Kinds whose int8 is verified and whose head can be scored again (cross-encoders and bi-encoders).
RESCORABLE_KINDS = frozenset({"cross-encoder", "bi-encoder"})


@dataclass(frozen=True)
class Engine:
    """One CPU engine: a backend at a precision (int8-rescore: with the head's precision)."""

    backend: str
    precision: str
    head: str | None = None

    def __str__(self) -> str:
        return f"{self.backend}/{self.precision}" + (f"+{self.head}-head" if self.head else "")

    @property
    def needs_bf16(self) -> bool:
        return "bf16" in (self.precision, self.head)


@dataclass(frozen=True)
class Fidelity:
    """Measured agreement with fp32 over many queries."""

    top10_overlap: float
    ndcg_delta: float

    @property
    def faithful(self) -> bool:
        # Rounded: a delta of exactly the limit (one query's -0.5 over 100) must not fail by float noise.
        return self.top10_overlap >= TOP10_OVERLAP_MIN and round(abs(self.ndcg_delta), 9) <= NDCG_DELTA_MAX


@dataclass(frozen=True)
class Pick:
    backend: str
    precision: str
    head: str | None
    reason: str


OV_INT8_BF16_HEAD = Engine("openvino", "int8-rescore", "bf16")
OV_INT8_FP32_HEAD = Engine("openvino", "int8-rescore", "fp32")
OV_BF16 = Engine("openvino", "bf16")
OV_INT8 = Engine("openvino", "int8")
OV_FP32 = Engine("openvino", "fp32")
ORT_INT8_RESCORE = Engine("onnx", "int8-rescore", "fp32")
ORT_INT8 = Engine("onnx", "int8")
ORT_FP32 = Engine("onnx", "fp32")

# Fastest first, per CPU class. bf16: bench/results/cpu_engines.json (Intel Xeon with AMX; the Zen 4 figures of
# DESIGN.md section 4 give the same order). int8 dot products without bf16, and neither: measured with oneDNN
# capped to that instruction set (ONEDNN_MAX_CPU_ISA) in bench/results/cpu_engines-vnni.json and -avx2.json;
# ONNX Runtime cannot be capped, so its place there is from the AVX2 Zen 3 runs (bench/results/throughput-peers.json).
SPEED_ORDER: dict[str, tuple[Engine, ...]] = {
    "bf16": (OV_INT8, OV_INT8_BF16_HEAD, OV_BF16, OV_INT8_FP32_HEAD, ORT_INT8, ORT_INT8_RESCORE, OV_FP32, ORT_FP32),
    "int8-dot": (OV_INT8, OV_INT8_FP32_HEAD, ORT_INT8, ORT_INT8_RESCORE, OV_FP32, ORT_FP32),
    "plain": (OV_INT8, OV_INT8_FP32_HEAD, ORT_INT8, ORT_INT8_RESCORE, OV_FP32, ORT_FP32),
}

# bench/results/int8_fidelity_100.json (vs ONNX Runtime fp32; int8-rescore served with its default head of 20).
FIDELITY: dict[str, dict[Engine, Fidelity]] = {
    "cross-encoder": {
        ORT_FP32: Fidelity(1.0, 0.0),
    },
    "bi-encoder": {
        ORT_FP32: Fidelity(1.0, 0.0),
    },
}

# LLM rerankers on CPUs with bf16: torch bf16 against torch fp32 (bench/results/llm_bf16.json, Intel Xeon with
# AMX): speed ratio over the Qwen3-0.6B shape cut to 4 layers, and the lowest Spearman of the yes/no logit over it
# and the golden Qwen3, Qwen2 and Gemma fixtures. (DESIGN.md's Zen 4 run: 2.0x at Spearman 0.997.)
LLM_BF16_SPEEDUP = 3.61
LLM_BF16_SPEARMAN = 0.999
# torch runs a batch's shared prompt prefix (template + instruction + query) once, the ONNX graph every prompt in
# full: 1.39x onnx at 100 documents (bench/results/llm_prefix.json, Qwen3-0.6B width at 4 layers).
LLM_BACKEND_REASON = "torch for LLM rerankers on the CPU: it reuses the shared prompt prefix"


def cpu_class(cpu: Cpu) -> str:
    if cpu.bf16:
        return "bf16"
    return "int8-dot" if cpu.int8_dot else "plain"


def fastest_faithful(cpu: Cpu, kind: str, *, x86: bool, backend: str | None = None) -> Pick:
    """The fastest engine measured faithful for `kind` on this CPU's class (only `backend`'s, if given)."""
    if kind == "causal-lm":
        if cpu.bf16 and LLM_BF16_SPEEDUP > 1 and LLM_BF16_SPEARMAN >= LLM_SPEARMAN_MIN:
            reason = (
                f"bf16 in hardware: {LLM_BF16_SPEEDUP:.2f}x fp32 at Spearman {LLM_BF16_SPEARMAN:.3f} "
                f"(bench/results/llm_bf16.json); {LLM_BACKEND_REASON}"
            )
            return Pick("torch", "bf16", None, reason)
        return Pick("torch", "fp32", None, f"exact scores on the CPU; {LLM_BACKEND_REASON}")
    if kind not in RESCORABLE_KINDS:
        return Pick("onnx", "fp32", None, "exact scores on the CPU")
    group = cpu_class(cpu)
    measured = FIDELITY.get(kind, {})
    for engine in SPEED_ORDER[group]:
        if backend is not None and engine.backend != backend:
            continue
        if engine.backend == "openvino" and not x86:
            continue  # measured on x86 only
        if engine.needs_bf16 and not cpu.bf16:
            continue
        fidelity = measured.get(engine)
        if fidelity is None or not fidelity.faithful:
            continue
        reason = (
            f"the fastest engine on a CPU with {_describe(group)} whose scores keep fp32's top 10 "
            f"(overlap {fidelity.top10_overlap:.3f}, NDCG@10 {fidelity.ndcg_delta:+.4f}; backends/fidelity.py)"
        )
        return Pick(engine.backend, engine.precision, engine.head, reason)
    return Pick(backend or "onnx", "fp32", None, "exact scores on the CPU")


def _describe(group: str) -> str:
    return {
        "bf16": "bf16 and int8 dot products",
        "int8-dot": "int8 dot products",
        "plain": "neither bf16 nor int8 dot products",
    }[group]
