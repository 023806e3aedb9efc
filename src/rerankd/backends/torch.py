"""The torch reference backend: plain transformers models, fp32 (fp16 on CUDA; bf16 on CPUs with bf16 arithmetic)."""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModel, AutoModelForSequenceClassification
from transformers.utils import logging as hf_logging

from rerankd.backends.base import Batch, pool
from rerankd.backends.causal import MIN_SHARED_PREFIX, load_scorer
from rerankd.models import ModelSpec

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend:
    """Runs a transformers model under `torch.inference_mode`. LLM rerankers run a batch's shared prompt prefix once
    when it has at least `min_shared_prefix` tokens (None: every row in full; see causal.YesNoScorer.score)."""

    name = "torch"
    width_multiple = 1
    parallel_batches = 1  # its intra-op threads split one batch
    min_shared_prefix: int | None = MIN_SHARED_PREFIX

    def __init__(self, spec: ModelSpec, *, device: str = "cpu", precision: str = "fp32", threads: int = 1) -> None:
        if precision not in _DTYPES:
            raise ValueError(f"precision: the torch backend supports {', '.join(_DTYPES)}, not {precision!r}")
        if precision == "fp16" and device != "cuda":
            raise ValueError("precision: fp16 needs --device cuda with the torch backend")
        self.spec = spec
        self.device = device
        self.precision = precision
        if device == "cpu":
            torch.set_num_threads(threads)  # process-wide (one torch pool); every model here gets the same count
        hf_logging.disable_progress_bar()  # progress bars garble server logs
        if spec.kind == "causal-lm":
            self.model = load_scorer(spec, dtype=_DTYPES[precision]).to(device)
        else:
            loader = AutoModelForSequenceClassification if spec.kind == "cross-encoder" else AutoModel
            self.model = loader.from_pretrained(spec.path, dtype=_DTYPES[precision]).to(device).eval()

    def forward(self, batch: Batch) -> np.ndarray:
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if batch.token_type_ids is not None:
            inputs["token_type_ids"] = batch.token_type_ids
        tensors = {key: torch.from_numpy(value).to(self.device) for key, value in inputs.items()}
        with torch.inference_mode():
            if self.spec.kind == "causal-lm":
                scores = self.model.score(**tensors, min_prefix=self.min_shared_prefix)
                return scores.float().cpu().numpy()
            output = self.model(**tensors)
        if self.spec.kind == "cross-encoder":
            return output.logits.float().cpu().numpy()
        hidden = output.last_hidden_state.float().cpu().numpy()
        return pool(hidden, batch.attention_mask, self.spec.pooling, self.spec.normalize)
