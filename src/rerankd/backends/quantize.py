"""Lower an fp32 ONNX model's precision: int8 dynamic quantization (CPU) or fp16 (CUDA). The int8 recipe (QInt8
weights per output channel, activations per batch) was picked by measurement: docs/architecture.md (Design notes).
"""

from __future__ import annotations

import logging
from pathlib import Path

# Above this the protobuf limit (2 GiB) is near: tensors go to a side file.
_EXTERNAL_DATA_BYTES = 1_800_000_000


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of every MatMul/Gemm weight: QInt8, per channel."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    root.addFilter(_quiet_quantizer)
    try:
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=False,
            use_external_data_format=_large(source),
        )
    finally:
        root.removeFilter(_quiet_quantizer)


def convert_fp16(source: Path, target: Path) -> None:
    """fp16 weights and compute for CUDA: onnxruntime's BERT fusions for GPU, then float16 conversion.

    Inputs and outputs stay int64 / float32 so the backend feeds and reads the same arrays at every precision.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(source), model_type="bert", use_gpu=True, opt_level=0)
    optimized.convert_float_to_float16(keep_io_types=True)
    optimized.save_model_to_file(str(target), use_external_data_format=_large(source))


def _large(model: Path) -> bool:
    return sum(item.stat().st_size for item in model.parent.iterdir() if item.is_file()) > _EXTERNAL_DATA_BYTES


def _quiet_quantizer(record: logging.LogRecord) -> bool:
    # The quantizer logs a line per tensor on the root logger, and advises shape pre-processing, which changes
    # nothing for transformer exports; neither belongs in a server's log.
    advice = record.getMessage().startswith("Please consider to run pre-processing")
    return record.levelno >= logging.WARNING and not advice
