"""Export a model to ONNX once, cached by model revision and options; int8 and fp16 derive from the fp32 export.

torch.onnx's TorchScript exporter, eager attention, and every export checked against torch before it is kept; the
cache is built once under a file lock, and checked against its SHA-256 digests whenever it is used, rebuilt when it
no longer matches (`rerankd.cachedir`). Why: docs/architecture.md (Design notes, ONNX export).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rerankd.backends.causal import load_scorer
from rerankd.backends.quantize import convert_fp16, quantize_int8
from rerankd.cachedir import build_once
from rerankd.models import ModelSpec

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
OPSET = 17
EXPORT_VERSION = 1  # bump when the recipe changes, so caches built by older code are not reused
VERIFY_ATOL = 1e-4  # an fp32 export that disagrees with torch by more than this is refused


class ExportError(RuntimeError):
    """The exported graph does not reproduce the torch model."""


@dataclass(frozen=True)
class LmRecipe:
    """How an LLM reranker's graph is traced and rewritten; the variants are measured in bench/llm_profile.py."""

    attention: str = "eager"  # attn_implementation while tracing
    padding_mask: bool = True  # False: causal mask only (exact with right padding, see causal.YesNoScorer)
    fusions: bool = False  # onnxruntime.transformers' decoder fusions (RMSNorm, rotary, attention) after export


LM_RECIPE = LmRecipe()  # the variants measured no faster (docs/architecture.md, Design notes, ONNX export)


@dataclass(frozen=True)
class ExportOptions:
    """Everything that changes the exported file; `key` names its cache folder."""

    kind: str
    precision: str

    @property
    def key(self) -> str:
        kind = {"cross-encoder": "ce", "causal-lm": "lm"}.get(self.kind, "bi")
        variant = "int8-qint8-perchannel" if self.precision == "int8" else self.precision
        return f"{kind}-{variant}-opset{OPSET}-v{EXPORT_VERSION}"


def cache_folder(spec: ModelSpec, options: ExportOptions, cache_dir: Path) -> Path:
    return Path(cache_dir) / "onnx" / f"{spec.short_name}-{spec.revision}-{options.key}"


def ensure_onnx(spec: ModelSpec, precision: str, cache_dir: Path) -> Path:
    """The ONNX file of `spec` at `precision`, exported (and quantized or converted) on first use only."""
    options = ExportOptions(spec.kind, precision)
    folder = cache_folder(spec, options, cache_dir)
    facts = {"model": spec.name, "revision": spec.revision, "options": options.key, "opset": OPSET}

    def build(staging: Path) -> None:
        started = time.perf_counter()
        if precision == "fp32":
            facts.update(export_fp32(spec, staging / MODEL_FILE))
        else:
            source = ensure_onnx(spec, "fp32", cache_dir)
            {"int8": quantize_int8, "fp16": convert_fp16}[precision](source, staging / MODEL_FILE)
        (staging / "export.json").write_text(json.dumps(facts, indent=2))
        seconds = time.perf_counter() - started
        log.info("exported %s to ONNX (%s) in %.1f s: %s", spec.name, options.key, seconds, folder)

    # Verified by digest at every load: a file changed on disk is rebuilt, never served (rerankd.cachedir).
    return build_once(folder, build, done=MODEL_FILE, verify=True) / MODEL_FILE


def export_fp32(spec: ModelSpec, target: Path, recipe: LmRecipe = LM_RECIPE) -> dict:
    """Trace the model to `target`, then check it against torch; returns the check's facts. `recipe` applies to
    LLM rerankers only; their check compares with the padding-masked scorer whatever the recipe."""
    import onnxruntime
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.path)
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in tokenizer.model_input_names and spec.kind != "causal-lm":
        names.append("token_type_ids")
    reference = None
    if spec.kind == "causal-lm":
        graph = load_scorer(
            spec, dtype=torch.float32, attn_implementation=recipe.attention, padding_mask=recipe.padding_mask
        )
        reference = graph if recipe.padding_mask else load_scorer(spec, dtype=torch.float32)
        output = "scores"
        tokenizer.padding_side = "right"  # as the engine pads: the scorer reads each row's last real token
    else:
        loader = AutoModelForSequenceClassification if spec.kind == "cross-encoder" else AutoModel
        model = loader.from_pretrained(spec.path, dtype=torch.float32, attn_implementation="eager").eval()
        output = "logits" if spec.kind == "cross-encoder" else "last_hidden_state"
        graph = _named_output(model, names, output)

    def sample(texts: list[str]) -> dict[str, torch.Tensor]:
        # Padded on purpose: a batch without padding could let the tracer drop the attention mask.
        pairs = (["a query"] * len(texts), texts) if spec.kind == "cross-encoder" else (texts,)
        encoded = tokenizer(*pairs, padding=True, truncation=True, max_length=spec.max_length, return_tensors="pt")
        return {name: encoded[name] for name in names}

    traced = sample(["a short document", "x"])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; the check below is what counts
        torch.onnx.export(
            graph,
            tuple(traced[name] for name in names),
            str(target),
            input_names=names,
            output_names=[output],
            dynamic_axes={**{name: {0: "batch", 1: "tokens"} for name in names}, output: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    if spec.kind == "causal-lm" and recipe.fusions:
        fuse_decoder(target, spec)
    probe = sample(["a longer document about packages and databases " * 3, "two words", "one", "sqlite"])
    with torch.no_grad():
        expected = (reference or graph)(*(probe[name] for name in names)).numpy()  # the padding-masked scorer
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    # The tracer drops inputs the graph never reads (DeBERTa-v2 with `type_vocab_size: 0` ignores token types).
    declared = {item.name for item in session.get_inputs()}
    got = session.run(None, {name: value.numpy() for name, value in probe.items() if name in declared})[0]
    diff = float(np.abs(got - expected).max())
    if not diff <= VERIFY_ATOL:
        raise ExportError(f"ONNX export of {spec.name} differs from torch by {diff:.2e} (limit {VERIFY_ATOL:.0e})")
    return {"max_abs_diff_vs_torch": diff, "torch": torch.__version__}


def fuse_decoder(model: Path, spec: ModelSpec) -> None:
    """Rewrite `model` in place with onnxruntime.transformers' decoder fusions (its `qwen3` recipe: RMSNorm into
    SimplifiedLayerNormalization, residual + RMSNorm into SkipSimplifiedLayerNormalization, rotary embeddings)."""
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((spec.path / "config.json").read_text())
    text = config.get("text_config", config)
    optimized = optimize_model(
        str(model), model_type="qwen3", num_heads=text["num_attention_heads"], hidden_size=text["hidden_size"],
        opt_level=0,
    )  # fmt: skip
    optimized.save_model_to_file(str(model), use_external_data_format=model.stat().st_size > 1_800_000_000)


def _named_output(model, names: list[str], output: str):
    """Wrap a transformers model: positional inputs in `names` order, one tensor out, as the exporter needs."""
    import torch

    class NamedOutput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return getattr(self.model(**dict(zip(names, inputs, strict=True))), output)

    return NamedOutput().eval()  # eval: the exporter restores the wrapper's mode, and that reaches the model
