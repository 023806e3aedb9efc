"""An LLM reranker as a one-output scorer: the decoder, the last real position, and two rows of the LM head.

sentence-transformers scores a causal LM with `logit[true] - logit[false]` at the last position (`LogitScore`).
Computing the full vocabulary (150k rows for Qwen) at every position to read two numbers at one is waste, so the
model is converted once at load time: the decoder body runs, the hidden state of each input's last real token is
taken (inputs are right-padded, so positions are those of an unpadded input), and only the true/false rows of the
LM head are applied. A final logit soft-cap (Gemma 2/3) is applied to both logits before the difference, as the
full head would. The output is one column, so the rest of the engine treats it like a one-logit cross-encoder.

Every prompt of a request starts with the same template, instruction and query tokens (about half of each prompt in
bench/llm_throughput.py). `YesNoScorer.score` runs a batch's longest shared prefix once and the rows' remainders
against its keys and values (`SharedPrefixCache`); `forward` stays the plain path the ONNX export traces. Where the
model's attention allows (`packs`: full attention everywhere, no logit soft-cap), the remainders also run packed into
one unpadded sequence (`packed_attention`), so the linear layers spend no FLOP on padding.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache, PretrainedConfig
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from rerankd.models import ModelSpec

# Shortest shared prefix run once for the batch; shorter ones take the plain path (see `YesNoScorer.score`).
MIN_SHARED_PREFIX = 32
PACKED_ATTENTION = "rerankd_packed_rows"  # the attention implementation name `packed_attention` is registered as


def shared_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Tokens every row of a right-padded batch starts with, stopping short of the shortest row's last real token
    (each row's last token must run in its own remainder: its hidden state is the score). 0 for a single row."""
    room = int(attention_mask.sum(dim=1).min()) - 1
    if input_ids.shape[0] < 2 or room <= 0:
        return 0
    differs = (input_ids[:, :room] != input_ids[:1, :room]).any(dim=0)
    return int(differs.int().argmax()) if bool(differs.any()) else room


def reused_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor, min_prefix: int | None) -> int:
    """The prefix `YesNoScorer.score` runs once for this batch: the shared one if at least `min_prefix` tokens
    (None: never), else 0 (every row in full)."""
    prefix = 0 if min_prefix is None else shared_prefix(input_ids, attention_mask)
    return prefix if prefix >= max(min_prefix or 0, 1) else 0


class SharedPrefixCache(DynamicCache):
    """A DynamicCache that, once `frozen`, holds one prefix that every row of a batch reads and nobody extends.

    After the prefix ran (batch 1), each `update` hands attention the prefix expanded to the batch (a view) followed
    by the rows' new states, exactly what a growing cache would return, then restores the layer to the prefix alone:
    a score is one forward, never extended, so keeping every layer's keys for the whole batch (DynamicCache's way)
    would only multiply the forward's peak memory.
    """

    frozen = False

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layers[layer_idx] if layer_idx < len(self.layers) else None
        if not self.frozen or layer is None or layer.keys is None:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        keys, values = layer.keys, layer.values
        seen = getattr(layer, "cumulative_length", None)  # sliding-window layers count what they were fed
        layer.keys = keys.expand(key_states.shape[0], -1, -1, -1)
        layer.values = values.expand(value_states.shape[0], -1, -1, -1)
        try:
            return super().update(key_states, value_states, layer_idx, *args, **kwargs)
        finally:
            layer.keys, layer.values = keys, values
            if seen is not None:
                layer.cumulative_length = seen


class PackedRows:
    """Where a batch's remainders lie once packed end to end after the prefix, from their (right-padded) mask `real`:
    `index[r, j]` is the packed position of row r's j-th token (0 past its end), `ends` each row's last one,
    `positions` each packed token's position in its prompt, and `visible` what each padded position may attend to
    (the whole prefix, then its own row causally). Built once per batch, read by every layer's `packed_attention`."""

    def __init__(self, real: torch.Tensor, prefix: int) -> None:
        rows, width = real.shape
        packed = real.flatten().cumsum(0).view_as(real) - 1
        self.real = real
        self.index = torch.where(real, packed, 0)
        self.ends = real.sum(dim=1).cumsum(0) - 1
        self.positions = (torch.arange(width, device=real.device) + prefix).expand(rows, -1)[real]
        causal = torch.ones(width, prefix + width, dtype=torch.bool, device=real.device).tril(prefix)
        self.visible = (causal[None] & torch.cat((real.new_ones(rows, prefix), real), dim=1)[:, None])[:, None]


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float | None = None,
    packed_rows: PackedRows | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """sdpa, except for packed remainders (`packed_rows` given): the query holds the rows' tokens end to end after a
    shared prefix, whose keys and values lead `key` and `value`. The linear layers ran on those tokens alone (no
    padding); attention, a small share of the FLOPs, runs padded per row in one call, each row attending to the
    prefix and causally to itself."""
    if packed_rows is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    prefix, rows = key.shape[2] - query.shape[2], packed_rows.index.shape[0]

    def padded(states: torch.Tensor) -> torch.Tensor:  # (1, heads, tokens, dim) -> (rows, heads, width, dim)
        return states[0][:, packed_rows.index].transpose(0, 1)

    keys = torch.cat((key[:, :, :prefix].expand(rows, -1, -1, -1), padded(key[:, :, prefix:])), dim=2)
    values = torch.cat((value[:, :, :prefix].expand(rows, -1, -1, -1), padded(value[:, :, prefix:])), dim=2)
    output = torch.nn.functional.scaled_dot_product_attention(
        padded(query), keys, values, attn_mask=packed_rows.visible, scale=scaling, enable_gqa=True
    )
    return output.transpose(1, 2)[packed_rows.real][None], None  # back to (1, tokens, heads, dim)


AttentionInterface.register(PACKED_ATTENTION, packed_attention)


def packs(config: PretrainedConfig) -> bool:
    """Whether the remainders can run packed: sdpa attention, full (no sliding-window) layers, no logit soft-cap."""
    text = config.get_text_config()
    full = set(getattr(text, "layer_types", None) or ["full_attention"]) == {"full_attention"}
    return config._attn_implementation == "sdpa" and full and not getattr(text, "attn_logit_softcapping", None)


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
        # Under its own attention name the decoder builds no mask: `packed_attention` masks packed rows itself, and a
        # plain call runs sdpa causally, which for right-padded rows is what the padding mask allows real tokens.
        self.packed = padding_mask and packs(decoder.config)
        if self.packed:
            decoder.config._attn_implementation = PACKED_ATTENTION

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask if self.padding_mask else self._causal_masks(input_ids.shape[1], input_ids.device)
        hidden = self.decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        return self._logit(hidden[torch.arange(hidden.shape[0], device=hidden.device), attention_mask.sum(dim=1) - 1])

    def score(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, min_prefix: int | None = MIN_SHARED_PREFIX
    ) -> torch.Tensor:
        """`forward`'s scores; when the rows share at least `min_prefix` leading tokens (None: never), that prefix
        runs once (batch 1) and only the remainders run per row, attending to its keys and values.

        Positions continue from the prefix (the decoder counts them from the cache's length) and the mask covers
        prefix + remainder, so every real token sees what it sees in `forward`: the same scores within fp32 rounding
        (tests/test_llm_prefix.py), for fewer FLOPs."""
        prefix = reused_prefix(input_ids, attention_mask, min_prefix)
        if not prefix:
            return self(input_ids, attention_mask)
        cache = SharedPrefixCache(config=self.decoder.config)
        self.decoder(input_ids=input_ids[:1, :prefix], cache=cache, use_cache=True)
        cache.frozen = True
        if not self.packed:
            last = attention_mask.sum(dim=1) - 1 - prefix  # each row's last real token, counted after the prefix
            rest = self.decoder(
                input_ids=input_ids[:, prefix:], attention_mask=attention_mask, cache=cache, use_cache=True
            )
            return self._logit(rest.last_hidden_state[torch.arange(len(last), device=last.device), last])
        rows = PackedRows(attention_mask[:, prefix:].bool(), prefix)
        tokens = input_ids[:, prefix:][rows.real]
        rest = self.decoder(
            input_ids=tokens[None], position_ids=rows.positions[None], cache=cache, use_cache=True, packed_rows=rows
        )
        return self._logit(rest.last_hidden_state[0, rows.ends])

    def _logit(self, state: torch.Tensor) -> torch.Tensor:
        """The relevance logit from each row's hidden state at its last real token, (rows, hidden)."""
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
