"""OpenVINO on the CPU: fp32, bf16 (native bf16 CPUs only) and static int8 calibrated with NNCF.

It reads rerankd's own ONNX export (backends/export.py), so every precision starts from the graph that was checked
against torch. Compiled models are cached by OpenVINO itself (`CACHE_DIR`, beside the ONNX cache), so a restart
skips compilation. Why OpenVINO beside ONNX Runtime on CPUs: docs/performance.md.
"""

from __future__ import annotations

import json
import logging
import queue
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rerankd.backends.base import Batch, pool
from rerankd.cachedir import build_once
from rerankd.models import ModelSpec

if TYPE_CHECKING:
    import openvino

log = logging.getLogger(__name__)

# What `INFERENCE_PRECISION_HINT` runs the graph's floating-point part in; int8 graphs keep their quantized MatMuls
# in int8 whatever the hint, and run the rest (softmax, normalisation, GELU) at it.
_HINTS = {"fp32": "f32", "bf16": "bf16"}
INT8_RECIPE = "nncf-transformer-generic256-v1"  # changes to calibration or options change this name (the cache key)
CALIBRATION_PAIRS = 256
IR_FILE = "model.xml"


class OpenVinoBackend:
    """One compiled model with one stream of one thread per core, and an infer request per stream: `forward` may be
    called from as many threads at once (the scheduler's workers), each batch on its own core."""

    name = "openvino"
    device = "cpu"
    # OpenVINO's CPU plugin prepares kernels per input shape, and a server sees new lengths in every request: with
    # 300 new documents a request, padding to a multiple of 16 ran static int8 1.40x and bf16 1.33x faster
    # (bench/results/openvino_shapes.json; docs/performance.md, "Shapes").
    width_multiple = 16

    def __init__(
        self, spec: ModelSpec, onnx_model: Path, *, precision: str, threads: int, cache_dir: Path, float_precision: str
    ) -> None:
        """`precision`: fp32, bf16 or int8 (static; the graph is quantized and cached on first use);
        `float_precision`: what an int8 graph's remaining float operations run at (fp32 or bf16)."""
        import openvino

        self.spec = spec
        self.precision = precision
        hint = _HINTS[float_precision if precision == "int8" else precision]
        core = openvino.Core()
        # One cache folder per precision hint and thread count: OpenVINO 2026.4's cache key leaves the hint out, and
        # a bf16 model loaded from an fp32 model's blob crashed the process (double free).
        compiled = Path(cache_dir) / "openvino" / "compiled" / f"{hint}-{threads}s1t"
        core.set_property({"CACHE_DIR": str(compiled)})
        source = ensure_int8(spec, onnx_model, cache_dir) if precision == "int8" else onnx_model
        model = read_dynamic(core, source)
        # A stream per core, one thread each, the scheduler's batches run side by side: an encoder this narrow
        # splits poorly across threads (hidden 384, bf16: a 300-document request 1.35x faster than one stream of
        # 2 threads, a 10-document one alone 0.98x; bench/results/openvino_profile.json, docs/performance.md).
        properties = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": threads,
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_PRECISION_HINT": hint,
            # The tokenizer, the event loop and neighbours share these cores: pinned threads would starve them.
            "ENABLE_CPU_PINNING": False,
        }
        self._compiled = core.compile_model(model, "CPU", properties)
        self.parallel_batches = threads
        self._requests: queue.SimpleQueue[openvino.InferRequest] = queue.SimpleQueue()
        for _ in range(threads):
            self._requests.put(self._compiled.create_infer_request())
        self._inputs = {port.get_any_name() for port in self._compiled.inputs}

    def forward(self, batch: Batch) -> np.ndarray:
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if "token_type_ids" in self._inputs:
            types = batch.token_type_ids
            feeds["token_type_ids"] = types if types is not None else np.zeros_like(batch.input_ids)
        request = self._requests.get()  # never waits: no more callers at once than requests
        try:
            output = np.array(request.infer(feeds)[0], dtype=np.float32)  # a copy: the request reuses its buffer
        finally:
            self._requests.put(request)
        if self.spec.kind != "bi-encoder":
            return output
        return pool(output, batch.attention_mask, self.spec.pooling, self.spec.normalize)


def read_dynamic(core: openvino.Core, path: Path) -> openvino.Model:
    """A model whose inputs take any batch size and length (the exports are traced at one shape)."""
    import openvino

    model = core.read_model(str(path))
    model.reshape({port.get_any_name(): openvino.PartialShape([-1, -1]) for port in model.inputs})
    return model


def int8_folder(spec: ModelSpec, cache_dir: Path) -> Path:
    kind = "ce" if spec.kind == "cross-encoder" else "bi"
    return Path(cache_dir) / "openvino" / f"{spec.short_name}-{spec.revision}-{kind}-int8-{INT8_RECIPE}"


def ensure_int8(spec: ModelSpec, onnx_model: Path, cache_dir: Path) -> Path:
    """The model quantized to static int8 (OpenVINO IR), calibrated once on the packaged generic texts and cached."""
    folder = int8_folder(spec, cache_dir)

    def build(staging: Path) -> None:
        import nncf
        import openvino

        started = time.perf_counter()
        model = read_dynamic(openvino.Core(), onnx_model)
        inputs = {port.get_any_name() for port in model.inputs}
        samples = calibration_inputs(spec, inputs)
        quantized = nncf.quantize(
            model,
            nncf.Dataset(samples),
            model_type=nncf.ModelType.TRANSFORMER,  # keeps softmax, normalisation and attention scores in float
            subset_size=len(samples),
        )
        openvino.save_model(quantized, str(staging / IR_FILE))
        seconds = time.perf_counter() - started
        facts = {"model": spec.name, "revision": spec.revision, "recipe": INT8_RECIPE, "samples": len(samples)}
        (staging / "export.json").write_text(json.dumps({**facts, "calibration_seconds": round(seconds, 1)}))
        log.info("calibrated static int8 for %s with NNCF in %.1f s (%s): %s", spec.name, seconds, INT8_RECIPE, folder)

    return build_once(folder, build, done=IR_FILE, verify=True) / IR_FILE


def calibration_inputs(spec: ModelSpec, inputs: set[str]) -> list[dict[str, np.ndarray]]:
    """The packaged generic calibration texts (backends/calibration.py) as the model's inputs, one per sample:
    (query, passage) pairs for a cross-encoder, single texts for a bi-encoder."""
    from transformers import AutoTokenizer

    from rerankd.backends.calibration import calibration_pairs, calibration_texts

    tokenizer = AutoTokenizer.from_pretrained(spec.path)
    if spec.kind == "cross-encoder":
        encoded = [
            tokenizer(query, passage, truncation=True, max_length=spec.max_length, return_tensors="np")
            for query, passage in calibration_pairs(CALIBRATION_PAIRS)
        ]
    else:
        encoded = [
            tokenizer(text, truncation=True, max_length=spec.max_length, return_tensors="np")
            for text in calibration_texts(CALIBRATION_PAIRS)
        ]
    samples = []
    for item in encoded:
        sample = {name: np.asarray(item[name], dtype=np.int64) for name in inputs if name in item}
        if "token_type_ids" in inputs and "token_type_ids" not in sample:
            sample["token_type_ids"] = np.zeros_like(sample["input_ids"])
        samples.append(sample)
    return samples
