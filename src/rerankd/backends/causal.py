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

    def __init__(
        self,
        decoder: torch.nn.Module,
        rows: torch.Tensor,
        bias: torch.Tensor | None,
        cap: float | None,
        *,
        padding_mask: bool = True,
    ):
        super().__init__()
        self.decoder = decoder
        # Right padding under causal attention: no real token attends to a later (pad) position, so the padding mask
        # changes nothing this scorer reads. `padding_mask=False` passes the causal mask alone (an export variant
        # measured by bench/llm_profile.py: no per-batch padding mask to construct).
        self.padding_mask = padding_mask
        self.register_buffer("rows", rows.detach().clone())  # (1 or 2, hidden): true, then false
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.cap = cap

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask if self.padding_mask else self._causal_masks(input_ids.shape[1], input_ids.device)
        hidden = self.decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        last = attention_mask.sum(dim=1) - 1
        state = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        logits = state @ self.rows.to(state.dtype).T
        if self.bias is not None:
            logits = logits + self.bias.to(logits.dtype)
        if self.cap:
            logits = torch.tanh(logits / self.cap) * self.cap
        return logits[:, :1] - logits[:, 1:2] if logits.shape[1] == 2 else logits

    def _causal_masks(self, length: int, device: torch.device) -> torch.Tensor | dict[str, torch.Tensor]:
        """The additive masks transformers would build for an unpadded batch of this length: causal, and for
        sliding-window layers (Gemma 2/3) also blocked beyond the window. Passed ready-made (a 4-D tensor, or one per
        layer kind), they skip the decoder's own mask code, which traces a packed-sequence check (`aten::diff`)."""
        position = torch.arange(length, device=device)
        distance = position[:, None] - position[None, :]  # query minus key position
        config = self.decoder.config
        blocked = {"full_attention": distance < 0}
        kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
        if "sliding_attention" in kinds:
            blocked["sliding_attention"] = (distance < 0) | (distance >= config.sliding_window)
        lowest = torch.finfo(self.rows.dtype).min
        masks = {kind: torch.zeros(length, length, dtype=self.rows.dtype, device=device).masked_fill(where, lowest)
                 for kind, where in blocked.items()}  # fmt: skip
        return masks if len(masks) > 1 else masks["full_attention"][None, None]


def load_scorer(
    spec: ModelSpec, *, dtype: torch.dtype, attn_implementation: str | None = None, padding_mask: bool = True
) -> YesNoScorer:
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
    return YesNoScorer(model.get_decoder(), head.weight[ids], bias, cap, padding_mask=padding_mask).eval()
