"""The fast backend: onnxruntime on the CPU (fp32, int8) or on CUDA (fp16), from a cached export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from rerankd.backends.base import Batch, pool
from rerankd.models import ModelSpec


class OnnxBackend:
    """One onnxruntime session; `forward` may be called from one thread at a time (the scheduler's worker)."""

    name = "onnx"
    width_multiple = 1
    parallel_batches = 1  # its intra-op threads split one batch

    def __init__(self, spec: ModelSpec, model_path: Path, *, device: str, precision: str, threads: int) -> None:
        self.spec = spec
        self.device = device
        self.precision = precision
        self.session = onnxruntime.InferenceSession(
            str(model_path), session_options(threads), providers=providers(device)
        )
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise RuntimeError("device: onnxruntime could not start its CUDA provider (is onnxruntime-gpu installed?)")
        self._inputs = {item.name for item in self.session.get_inputs()}

    def forward(self, batch: Batch) -> np.ndarray:
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if "token_type_ids" in self._inputs:
            types = batch.token_type_ids
            feeds["token_type_ids"] = types if types is not None else np.zeros_like(batch.input_ids)
        output = self.session.run(None, feeds)[0]
        if self.spec.kind != "bi-encoder":  # logits (cross-encoders) or the yes/no logit (LLM rerankers)
            return output.astype(np.float32, copy=False)
        return pool(output, batch.attention_mask, self.spec.pooling, self.spec.normalize)


def session_options(threads: int) -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # encoder graphs are one chain of ops: nothing to run side by side
    # Idle pool threads sleep instead of spinning: spinning starves the tokenizer, the event loop and neighbours
    # on small machines (2 busy cores, int8: 11-15 docs/s spinning, 18-26 sleeping).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: the "some nodes were not assigned" notes are expected on CUDA
    return options


def providers(device: str) -> list:
    if device == "cuda":
        # Shapes change with every batch: the heuristic conv/GEMM search avoids re-tuning per shape.
        cuda = {"cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": True}
        return [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
