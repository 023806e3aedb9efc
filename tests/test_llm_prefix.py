"""Shared-prefix reuse for LLM rerankers (causal.YesNoScorer.score) gives the scores of the full computation.

Every prompt of a request starts with the same template, instruction and query tokens; the torch backend runs a
batch's longest shared prefix once and only the remainders per row. These tests compare that path with the plain
forward (every row in full) and with sentence-transformers on the golden fixtures of every verified causal family
(tests/test_golden_llm.py), for one request's rows, rows of different requests mixed in one batch (a short shared
prefix), and rows of different lengths (right padding), at fp32's tolerance (1e-5 on logits and probabilities).
Over HTTP, tests/test_golden_llm.py's torch engine takes this path (the default); the last test here checks that its
requests do share a prefix long enough to take it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DOCUMENTS, QUERY
from sentence_transformers import CrossEncoder
from test_golden_llm import INSTRUCTION, LONG_QUERY, RECIPES, REQUESTS, build_tiny_llm
from test_golden_scores import TOLERANCE

from rerankd.backends.base import Batch
from rerankd.backends.causal import MIN_SHARED_PREFIX, SharedPrefixCache, YesNoScorer, load_scorer, shared_prefix
from rerankd.engine.tokenize import Tokenizer
from rerankd.models import resolve_model

ATOL = TOLERANCE["torch", "fp32"]
PAIRS = {
    "one request": [(QUERY, d, None) for d in [*DOCUMENTS, "Network file system server and tools."]],
    "mixed requests": [
        (QUERY, DOCUMENTS[0], None),
        (LONG_QUERY, DOCUMENTS[1], None),  # with the instruction too, Qwen2's window would leave no document room
        (QUERY, DOCUMENTS[2], INSTRUCTION),
        *[("sqlite", d, None) for d in DOCUMENTS[:2]],
    ],
}


class Loaded:
    """A fixture family's scorer, tokenizer and sentence-transformers model."""

    def __init__(self, folder: Path) -> None:
        self.spec = resolve_model(str(folder))
        self.scorer = load_scorer(self.spec, dtype=torch.float32)
        self.tokenizer = Tokenizer(self.spec)
        self.reference = CrossEncoder(str(folder), device="cpu")

    def batch(self, pairs: list[tuple[str, str, str | None]]) -> Batch:
        items = [item for q, d, i in pairs for item in self.tokenizer.encode_prompts(q, [d], i)]
        return self.tokenizer.collate(items)

    def run(self, batch: Batch, how: Callable[..., torch.Tensor]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Scores of `how` on the batch, and the (rows, tokens) shape of each decoder call it made."""
        calls: list[tuple[int, int]] = []
        hook = self.scorer.decoder.register_forward_pre_hook(
            lambda _, __, kwargs: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
        )
        try:
            with torch.inference_mode():
                scores = how(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
        finally:
            hook.remove()
        return scores[:, 0].numpy(), calls

    def expected(self, pairs: list[tuple[str, str, str | None]]) -> np.ndarray:
        """sentence-transformers' raw scores, pair by pair (each request has its own instruction)."""
        return np.concatenate([
            self.reference.predict([(q, d)], activation_fn=torch.nn.Identity(), prompt=i) for q, d, i in pairs
        ])  # fmt: skip


@pytest.fixture(scope="module", params=list(RECIPES))
def loaded(request: pytest.FixtureRequest) -> Loaded:
    return Loaded(build_tiny_llm(request.param))


@pytest.mark.parametrize("case", list(PAIRS))
def test_prefix_reuse_equals_the_full_computation_and_sentence_transformers(loaded: Loaded, case: str) -> None:
    pairs = PAIRS[case]
    batch = loaded.batch(pairs)
    lengths = batch.attention_mask.sum(axis=1)
    assert len(set(lengths.tolist())) > 1  # rows of different lengths: right padding is covered
    prefix = shared_prefix(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
    assert 0 < prefix < lengths.min()
    full, full_calls = loaded.run(batch, loaded.scorer)
    reused, reused_calls = loaded.run(batch, lambda ids, mask: loaded.scorer.score(ids, mask, min_prefix=1))
    assert full_calls == [batch.input_ids.shape]
    # The prefix ran once, then the remainders: packed end to end without padding (every family here has full
    # attention and no soft-cap), so the decoder saw exactly the remainders' real tokens.
    assert loaded.scorer.packed
    assert reused_calls == [(1, prefix), (1, int(lengths.sum()) - len(pairs) * prefix)]
    reference = loaded.expected(pairs)
    assert np.ptp(reference) > 1e-2  # the scores tell rows apart: the comparison is not vacuous
    np.testing.assert_allclose(full, reference, rtol=0, atol=ATOL)
    np.testing.assert_allclose(reused, reference, rtol=0, atol=ATOL)
    np.testing.assert_allclose(1 / (1 + np.exp(-reused)), 1 / (1 + np.exp(-reference)), rtol=0, atol=ATOL)


def test_a_short_prefix_or_none_takes_the_plain_path(loaded: Loaded) -> None:
    batch = loaded.batch(PAIRS["mixed requests"])
    prefix = shared_prefix(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
    full, _ = loaded.run(batch, loaded.scorer)
    for threshold in (prefix + 1, None):
        scores, calls = loaded.run(batch, lambda ids, mask, t=threshold: loaded.scorer.score(ids, mask, min_prefix=t))
        assert calls == [batch.input_ids.shape]
        np.testing.assert_array_equal(scores, full)


def test_shared_prefix_stops_at_the_first_difference_and_before_the_last_real_token() -> None:
    ids = torch.tensor([[1, 2, 3, 4, 5, 0], [1, 2, 3, 9, 5, 6], [1, 2, 3, 4, 5, 6]])
    mask = (ids != 0).long()
    assert shared_prefix(ids, mask) == 3
    same = torch.tensor([[1, 2, 3, 4, 0], [1, 2, 3, 4, 5]])
    assert shared_prefix(same, (same != 0).long()) == 3  # the shorter row's last token (4) runs in its remainder
    assert shared_prefix(ids[:1], mask[:1]) == 0  # one row: nothing to share


def test_the_cache_keeps_only_the_prefix(loaded: Loaded) -> None:
    """The remainders' keys and values are handed to attention, not kept: memory stays one prefix, not a batch."""
    batch = loaded.batch(PAIRS["one request"])
    ids, mask = torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)
    prefix = shared_prefix(ids, mask)
    decoder = loaded.scorer.decoder
    cache = SharedPrefixCache(config=decoder.config)
    with torch.inference_mode():
        decoder(input_ids=ids[:1, :prefix], cache=cache, use_cache=True)
        cache.frozen = True
        decoder(input_ids=ids[:, prefix:], attention_mask=mask, cache=cache, use_cache=True)
    assert [tuple(layer.keys.shape[::2]) for layer in cache.layers] == [(1, prefix)] * len(cache.layers)
    assert cache.get_seq_length() == prefix


def test_sliding_windows_and_soft_capping_gemma2_shape() -> None:
    """A Gemma-2-shaped decoder (not a served family): sliding-window layers whose window is shorter than the
    prefix (the cache keeps only the window's tail) and attention and final-logit soft-capping."""
    from transformers import AutoModelForCausalLM, Gemma2Config

    config = Gemma2Config(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, sliding_window=6, max_position_embeddings=64, initializer_range=0.2,
        final_logit_softcapping=3.0, attn_logit_softcapping=5.0,
    )  # fmt: skip
    assert "sliding_attention" in config.layer_types
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
        ids = torch.randint(1, 100, (4, 30))
    scorer = YesNoScorer(model.get_decoder(), model.get_output_embeddings().weight[[5, 6]], None, 3.0).eval()
    assert not scorer.packed  # sliding windows and soft-capping: the padded remainders, attention as the model has it
    ids[:, :12] = ids[0, :12]
    mask = torch.ones_like(ids)
    mask[1, 20:] = mask[2, 15:] = 0
    ids[mask == 0] = 0
    assert shared_prefix(ids, mask) == 12 > config.sliding_window
    with torch.inference_mode():
        full, reused = scorer(ids, mask), scorer.score(ids, mask, min_prefix=1)
        scorer.decoder.config.sliding_window = 64  # wider than the rows: no window at all
        unwindowed = scorer(ids, mask)
    assert (full - unwindowed).abs().max() > 1e-2  # the window changes the scores: it is exercised
    torch.testing.assert_close(reused, full, rtol=0, atol=ATOL)


def test_the_golden_http_requests_take_the_prefix_path() -> None:
    """tests/test_golden_llm.py's torch engine reuses the prefix by default: each family has a request there whose
    rows share at least MIN_SHARED_PREFIX tokens, so its HTTP comparison with sentence-transformers covers it."""
    for family in RECIPES:
        spec = resolve_model(str(build_tiny_llm(family)))
        tokenizer = Tokenizer(spec)
        prefixes = []
        for query, documents, instruction in REQUESTS:
            batch = tokenizer.collate(tokenizer.encode_prompts(query, documents, instruction))
            prefixes.append(shared_prefix(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)))
        assert max(prefixes) >= MIN_SHARED_PREFIX, (family, prefixes)


def test_auto_picks_torch_for_llm_rerankers_on_the_cpu() -> None:
    """Shared-prefix reuse runs in the torch backend only, so `auto` picks it for LLM rerankers at fp32 on the CPU;
    encoders keep their measured engine, and an explicit backend or int8 (refused for LLMs with its own message) is
    left alone."""
    from rerankd.backends.select import choose
    from rerankd.config import Settings

    avx2 = frozenset({"avx2", "fma"})
    llm = choose(Settings(device="cpu"), avx2, kind="causal-lm")
    assert (llm.backend, llm.precision) == ("torch", "fp32") and "shared prompt prefix" in llm.reason
    assert choose(Settings(device="cpu"), avx2, kind="cross-encoder").backend != "torch"
    assert choose(Settings(device="cpu", backend="onnx"), avx2, kind="causal-lm").backend == "onnx"
    assert choose(Settings(device="cpu", precision="int8"), avx2, kind="causal-lm").backend == "onnx"
