"""An LLM reranker as a one-output scorer: the decoder, the last real position, and two rows of the LM head.

sentence-transformers scores a causal LM with `logit[true] - logit[false]` at the last position (`LogitScore`).
Computing the full vocabulary (150k rows for Qwen) at every position to read two numbers at one is waste, so the
model is converted once at load time: the decoder body runs, the hidden state of each input's last real token is
taken (inputs are right-padded, so positions are those of an unpadded input), and only the true/false rows of the
LM head are applied. A final logit soft-cap (Gemma 2/3) is applied to both logits before the difference, as the
full head would. The output is one column, so the rest of the engine treats it like a one-logit cross-encoder.
"""

from __future__ import annotations

import torch

from rerankd.models import ModelSpec


class YesNoScorer(torch.nn.Module):
    """(input_ids, attention_mask) -> (batch, 1) relevance logit; right padding."""

    def __init__(self, decoder: torch.nn.Module, rows: torch.Tensor, bias: torch.Tensor | None, cap: float | None):
        super().__init__()
        self.decoder = decoder
        self.register_buffer("rows", rows.detach().clone())  # (1 or 2, hidden): true, then false
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.cap = cap

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = attention_mask.sum(dim=1) - 1
        state = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        logits = state @ self.rows.to(state.dtype).T
        if self.bias is not None:
            logits = logits + self.bias.to(logits.dtype)
        if self.cap:
            logits = torch.tanh(logits / self.cap) * self.cap
        return logits[:, :1] - logits[:, 1:2] if logits.shape[1] == 2 else logits


def load_scorer(spec: ModelSpec, *, dtype: torch.dtype, attn_implementation: str | None = None) -> YesNoScorer:
    """Load the causal LM of `spec` and keep only what its score needs (the full LM head is freed when untied)."""
    from transformers import AutoModelForCausalLM

    if spec.true_token_id is None:
        raise ValueError(f"{spec.name}: an LLM reranker needs its true token id")
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(spec.path, dtype=dtype, **extra).eval()
    ids = [spec.true_token_id] + ([spec.false_token_id] if spec.false_token_id is not None else [])
    head = model.get_output_embeddings()
    bias = None if getattr(head, "bias", None) is None else head.bias[ids]
    cap = getattr(model.config, "final_logit_softcapping", None) or getattr(
        model.config.get_text_config(), "final_logit_softcapping", None
    )
    return YesNoScorer(model.get_decoder(), head.weight[ids], bias, cap).eval()
