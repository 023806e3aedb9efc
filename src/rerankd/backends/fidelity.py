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

# Fastest first, per CPU class (bench/cpu_engines.py: a 300-document request in process, new documents each round).
# - amx (AMX bf16/int8, e.g. Sapphire Rapids): bench/results/cpu_engines.json, OpenVINO int8 3.40x
#   sentence-transformers, OpenVINO bf16 3.19x, ONNX Runtime int8 2.21x, ONNX Runtime fp32 1.23x, OpenVINO fp32 1.19x.
#   int8 and bf16 are within the machine's noise of each other (bf16 was 1.11x int8 in openvino_shapes.json), so the
#   more faithful bf16 goes first: one model for both kinds. The served int8-rescore variants: int8_fidelity_100.json.
# - bf16 (AVX-512 BF16 without AMX, e.g. Zen 4): DESIGN.md section 4's in-process run, OpenVINO int8 207 docs/s,
#   ONNX Runtime int8 147, OpenVINO bf16 143, OpenVINO fp32 80, ONNX Runtime fp32 71.
# - int8-dot (VNNI or Arm dot products, no bf16): bench/results/cpu_engines-avx512_core_vnni.json (this CPU with
#   oneDNN capped): OpenVINO int8 3.00x sentence-transformers, OpenVINO fp32 1.28x. ONNX Runtime cannot be capped:
#   its int8 was ~2.1x its fp32 on a Zen 4, OpenVINO int8 here 2.3x OpenVINO fp32 (not on Arm: x86 only).
# - plain (AVX2): OpenVINO fp32, 1.47x sentence-transformers with oneDNN capped to AVX2, where OpenVINO int8 was 0.92x
#   (bench/results/cpu_engines-avx2.json); int8-rescore was only 1.23x fp32 on a Zen 3 (throughput-peers.json
#   history): not worth a second model by default.
SPEED_ORDER: dict[str, tuple[Engine, ...]] = {
    "amx": (OV_BF16, OV_INT8, OV_INT8_BF16_HEAD, OV_INT8_FP32_HEAD, ORT_INT8, ORT_INT8_RESCORE, OV_FP32, ORT_FP32),
    "bf16": (OV_INT8, OV_INT8_BF16_HEAD, OV_INT8_FP32_HEAD, OV_BF16, ORT_INT8, ORT_INT8_RESCORE, OV_FP32, ORT_FP32),
    "int8-dot": (OV_INT8, OV_INT8_FP32_HEAD, ORT_INT8, ORT_INT8_RESCORE, OV_FP32, ORT_FP32),
    "plain": (OV_FP32, ORT_FP32),
}

# bench/results/int8_fidelity_100.json: 100 Debian dev queries x BM25 top 100, against ONNX Runtime fp32; the
# int8-rescore rows as served (head 20, every document returned). Intel Xeon with AMX; bf16 there is AMX's.
FIDELITY: dict[str, dict[Engine, Fidelity]] = {
    "cross-encoder": {  # ../shared/models/debian-minilm-ce
        ORT_FP32: Fidelity(1.0, 0.0),
        OV_FP32: Fidelity(1.0, 0.0),  # within 2e-6 of ONNX Runtime's logits (tests/test_openvino.py)
        ORT_INT8: Fidelity(0.887, -0.0091),
        ORT_INT8_RESCORE: Fidelity(0.993, 0.0),
        OV_BF16: Fidelity(0.986, 0.005),
        OV_INT8: Fidelity(0.958, -0.0002),
        OV_INT8_BF16_HEAD: Fidelity(0.985, 0.005),
        OV_INT8_FP32_HEAD: Fidelity(1.0, 0.0),
    },
    "bi-encoder": {  # all-MiniLM-L6-v2
        ORT_FP32: Fidelity(1.0, 0.0),
        OV_FP32: Fidelity(1.0, 0.0),
        ORT_INT8: Fidelity(0.900, 0.0043),
        ORT_INT8_RESCORE: Fidelity(0.996, -0.005),
        OV_BF16: Fidelity(0.996, 0.0004),
        OV_INT8: Fidelity(0.946, 0.0079),
        OV_INT8_BF16_HEAD: Fidelity(0.997, 0.0004),
        OV_INT8_FP32_HEAD: Fidelity(1.0, 0.0),
    },
    # The ColBERT trained by bench/train_colbert.py, MaxSim scores, 100 Debian dev queries x BM25 top 100
    # (bench/results/late_interaction_engines.json, same machine; not rescorable: no int8-rescore rows). Its cold
    # speed there against ONNX Runtime fp32: OpenVINO fp32 1.30x, bf16 3.57x, int8 3.92x; ONNX Runtime int8 2.24x.
    "late-interaction": {
        ORT_FP32: Fidelity(1.0, 0.0),
        OV_FP32: Fidelity(1.0, 0.0),
        ORT_INT8: Fidelity(0.882, -0.012),
        OV_BF16: Fidelity(0.993, 0.0),
        OV_INT8: Fidelity(0.920, 0.001),
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
    if "amx_bf16" in cpu.flags:
        return "amx"
    if cpu.bf16:
        return "bf16"
    return "int8-dot" if cpu.int8_dot else "plain"


def fastest_faithful(cpu: Cpu, kind: str, *, backend: str | None = None) -> Pick:
    """The fastest engine measured faithful for `kind` on this CPU's class (only `backend`'s, if given)."""
    if kind == "causal-lm":
        if cpu.bf16 and LLM_BF16_SPEEDUP > 1 and LLM_BF16_SPEARMAN >= LLM_SPEARMAN_MIN:
            reason = (
                f"bf16 in hardware: {LLM_BF16_SPEEDUP:.2f}x fp32 at Spearman {LLM_BF16_SPEARMAN:.3f} "
                f"(bench/results/llm_bf16.json); {LLM_BACKEND_REASON}"
            )
            return Pick("torch", "bf16", None, reason)
        return Pick("torch", "fp32", None, f"exact scores on the CPU; {LLM_BACKEND_REASON}")
    if kind not in FIDELITY:
        return Pick("onnx", "fp32", None, "exact scores on the CPU")
    group = cpu_class(cpu)
    measured = FIDELITY.get(kind, {})
    for engine in SPEED_ORDER[group]:
        if backend is not None and engine.backend != backend:
            continue
        if engine.backend == "openvino" and not cpu.x86:
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
        "amx": "AMX (bf16 and int8 matrix units)",
        "bf16": "bf16 and int8 dot products",
        "int8-dot": "int8 dot products",
        "plain": "neither bf16 nor int8 dot products",
    }[group]
