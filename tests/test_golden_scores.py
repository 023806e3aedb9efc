"""Golden scores: every verified cross-encoder family, on every backend, equals sentence-transformers over HTTP.

For each family in `rerankd.models.families.VERIFIED` a tiny random-initialised sequence-classification model is
built offline (2 layers, hidden 32) with a small real tokenizer of the family's kind, saved as a normal Hugging Face
folder and cached under the rerankd cache dir. BERT is the ce-fixture (MiniLM-L6 shape); a tiny BERT with two
labels covers the softmax convention. XLM-RoBERTa and DeBERTa-v2 get a Unigram (SentencePiece-style) tokenizer
trained here on a few hundred sentences, with the family's special tokens and pair template; ModernBERT and ELECTRA
reuse the packaged default model's WordPiece vocabulary.

One in-process server per engine serves every family; `/rerank` with `raw_scores: true` (the logit, or the last
label's logit) and `/v2/rerank` (sigmoid, or the last label's softmax probability) are compared with
`CrossEncoder.predict` on the same pairs, including a document and a query longer than the model's window, so
truncation is compared too. Tolerances, on logits and on probabilities alike:

    torch fp32   1e-5   (observed <= 2.2e-7), and the same order
    onnx  fp32   1e-4   (observed <= 9.6e-7), and the same order
    onnx  int8   a coarse ranking check only: Spearman >= 0.7 over all pairs, logits within 0.6 (see below)
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import DOCUMENTS, QUERY, ThreadServer, serve_once, wait_until
from scipy.stats import spearmanr
from sentence_transformers import CrossEncoder

from rerankd.api import create_app
from rerankd.cachedir import build_once
from rerankd.config import Settings, default_cache_dir
from rerankd.errors import ModelNotFound
from rerankd.models import resolve_model
from rerankd.models.families import VERIFIED
from rerankd.models.fixture import build_ce_fixture
from rerankd.models.presets import packaged_default_path
from rerankd.models.resolve import inspect_model

FIXTURE_VERSION = 1  # bump when a recipe below changes: the cached folders are keyed by it
WINDOW = 64  # tokens: the tiny models' window, so the long document and the long query are truncated
TOLERANCE = {("torch", "fp32"): 1e-5, ("onnx", "fp32"): 1e-4}
# int8 on these tiny random models (observed: Spearman 0.86-0.99, max |logit diff| 0.007-0.35): 32-wide layers do
# not average quantization errors out; trained-model int8 fidelity is tests/test_backends.py's. Catches gross breakage
# (a wrong label column, a broken graph); not a fidelity bound.
INT8_MIN_SPEARMAN = 0.7
INT8_MAX_LOGIT_DIFF = 0.6
ENGINES = [("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8")]

LONG_QUERY = " ".join(["store data in a single file engine with key document edit"] * 3)  # 33 words, 33-40 tokens
REQUESTS = [
    (QUERY, [*DOCUMENTS, "Network file system server and tools.", "A database of package descriptions."]),
    (LONG_QUERY, DOCUMENTS),  # both texts over half the window: longest-first truncation cuts both
]

# Tiny, one logit, and initialised wide (0.2, not 0.02) so that documents get clearly different scores.
SIZE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
SIZE |= {"initializer_range": 0.2, "num_labels": 1}

_WORDS = [
    "the",
    "a",
    "of",
    "to",
    "in",
    "and",
    "is",
    "for",
    "with",
    "on",
    "database",
    "store",
    "data",
    "lightweight",
    "sqlite",
    "library",
    "engine",
    "server",
    "strategy",
    "game",
    "ancient",
    "warfare",
    "tools",
    "edit",
    "menus",
    "alarm",
    "clock",
    "panel",
    "key",
    "value",
    "small",
    "footprint",
    "embedded",
    "applications",
    "query",
    "document",
    "package",
    "debian",
    "install",
    "system",
    "network",
    "file",
    "text",
    "search",
    "fast",
    "slow",
    "index",
    "table",
    "row",
    "column",
]


def _corpus() -> list[str]:
    """Sentences over a few thousand English words (the WordPiece vocabulary's whole words), the test texts'
    words more often: a Unigram model trained on them splits words into subwords as SentencePiece models do."""
    vocabulary = (packaged_default_path() / "vocab.txt").read_text().split("\n")
    words = [word for word in vocabulary if word.isascii() and word.isalpha() and len(word) > 2][:3000]
    texts = " ".join([QUERY, LONG_QUERY, *DOCUMENTS, *REQUESTS[0][1]]).lower().replace(".", " ").split()
    pool = words + _WORDS * 20 + texts * 5
    rng = random.Random(0)
    return [" ".join(rng.choice(pool) for _ in range(rng.randint(3, 16))) for _ in range(600)]


def _unigram_tokenizer(specials: list[str], unk: str, single: str, pair: str, input_names: list[str], **tokens):
    """A SentencePiece-style (Unigram, Metaspace) fast tokenizer with the family's special tokens and template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=1000, special_tokens=specials, unk_token=unk, show_progress=False)
    tokenizer.train_from_iterator(_corpus(), trainer)
    used = sorted({part.split(":")[0] for part in f"{single} {pair}".split() if not part.startswith("$")})
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(token, tokenizer.token_to_id(token)) for token in used]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token=unk, model_max_length=WINDOW, model_input_names=input_names, **tokens
    )


def _wordpiece_tokenizer(input_names: list[str]):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        packaged_default_path(), model_max_length=WINDOW, model_input_names=input_names
    )


def _xlm_roberta():
    from transformers import XLMRobertaConfig

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's order: <s>=0, <pad>=1, </s>=2
    tokenizer = _unigram_tokenizer(
        specials, "<unk>", "<s> $A </s>", "<s> $A </s> </s> $B </s>", ["input_ids", "attention_mask"],
        bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>", pad_token="<pad>", mask_token="<mask>",
    )  # fmt: skip
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": 0, "eos_token_id": 2}
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=WINDOW + 2, type_vocab_size=1, **ids, **SIZE
    )
    return config, tokenizer


def _deberta_v2():
    from transformers import DebertaV2Config

    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]  # DeBERTa-v3's order: [PAD]=0, [CLS]=1, [SEP]=2
    tokenizer = _unigram_tokenizer(
        specials, "[UNK]", "[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1",
        ["input_ids", "token_type_ids", "attention_mask"],
        bos_token="[CLS]", eos_token="[SEP]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
        mask_token="[MASK]",
    )  # fmt: skip
    # mxbai-rerank-xsmall-v1's shape: relative attention in log buckets, no absolute positions, no token types.
    config = DebertaV2Config(
        vocab_size=len(tokenizer), max_position_embeddings=WINDOW, pad_token_id=tokenizer.pad_token_id,
        type_vocab_size=0, relative_attention=True, position_buckets=16, max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"], position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True,
        **SIZE,
    )  # fmt: skip
    return config, tokenizer


def _modernbert():
    from transformers import ModernBertConfig

    tokenizer = _wordpiece_tokenizer(["input_ids", "attention_mask"])  # ModernBERT takes no token types
    ids = {"pad_token_id": tokenizer.pad_token_id, "cls_token_id": tokenizer.cls_token_id}
    ids |= {"sep_token_id": tokenizer.sep_token_id, "bos_token_id": None, "eos_token_id": None}
    # Layer 0 attends globally, layer 1 in a sliding window narrower than the inputs (as in the real model).
    config = ModernBertConfig(
        vocab_size=len(tokenizer), max_position_embeddings=WINDOW, local_attention=16, global_attn_every_n_layers=2,
        classifier_pooling="mean", **ids, **SIZE,
    )  # fmt: skip
    return config, tokenizer


def _electra():
    from transformers import ElectraConfig

    tokenizer = _wordpiece_tokenizer(["input_ids", "token_type_ids", "attention_mask"])
    config = ElectraConfig(vocab_size=len(tokenizer), embedding_size=16, max_position_embeddings=WINDOW, **SIZE)
    return config, tokenizer


def _bert_two_labels():
    from transformers import BertConfig

    tokenizer = _wordpiece_tokenizer(["input_ids", "token_type_ids", "attention_mask"])
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=WINDOW, **{**SIZE, "num_labels": 2})
    return config, tokenizer


RECIPES: dict[str, Callable] = {
    "xlm-roberta": _xlm_roberta,
    "modernbert": _modernbert,
    "deberta-v2": _deberta_v2,
    "electra": _electra,
    "bert-2-labels": _bert_two_labels,
}


def build_tiny(family: str) -> Path:
    """The family's tiny cross-encoder, built once into the rerankd cache (seeded: the same weights every time)."""
    target = default_cache_dir() / "fixtures" / f"golden-{family}-v{FIXTURE_VERSION}"

    def build(folder: Path) -> None:
        from transformers import AutoModelForSequenceClassification

        config, tokenizer = RECIPES[family]()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForSequenceClassification.from_config(config).eval()
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return build_once(target, build, done="config.json")


@pytest.fixture(scope="module")
def families() -> dict[str, Path]:
    """family -> model folder; `bert` is the ce-fixture."""
    return {"bert": build_ce_fixture(), **{family: build_tiny(family) for family in RECIPES}}


@pytest.fixture(scope="module")
def references(families: dict[str, Path]) -> dict[str, list[dict[str, np.ndarray]]]:
    """family -> per request: sentence-transformers' raw score (positive label's logit) and default score."""
    answers = {}
    for family, folder in families.items():
        model = CrossEncoder(str(folder), device="cpu")
        answers[family] = []
        for query, documents in REQUESTS:
            pairs = [(query, document) for document in documents]
            logits = np.asarray(model.predict(pairs, activation_fn=torch.nn.Identity()))
            if logits.ndim == 1:
                final = np.asarray(model.predict(pairs))  # the model's own activation: sigmoid for one logit
            else:
                final = np.asarray(model.predict(pairs, apply_softmax=True))[:, -1]  # P(last label)
                logits = logits[:, -1]
            answers[family].append({"raw": logits, "final": final})
    return answers


@contextlib.contextmanager
def serving(models: list[str], backend: str, precision: str) -> Iterator[str]:
    """An in-process server of `models` on one engine kind, ready: its URL."""
    settings = Settings(
        model=models, backend=backend, precision=precision, device="cpu", warmup_seconds=0, embedding_model=""
    )
    with ThreadServer(create_app(settings)) as srv:
        wait_until(lambda: httpx.get(f"{srv.url}/ready", timeout=5).status_code == 200, timeout=300, interval=0.2)
        yield srv.url


@pytest.fixture(scope="module", params=ENGINES, ids=["-".join(engine) for engine in ENGINES])
def golden_server(request: pytest.FixtureRequest, families: dict[str, Path]) -> Iterator[tuple[str, str, str]]:
    """One server per engine serving every family: (url, backend, precision)."""
    backend, precision = request.param
    with serving([str(folder) for folder in families.values()], backend, precision) as url:
        yield url, backend, precision


def _by_index(results: list[dict], key: str, count: int) -> np.ndarray:
    scores = np.full(count, np.nan, dtype=np.float64)
    for item in results:
        scores[item["index"]] = item[key]
    return scores


@pytest.mark.parametrize("family", ["bert", *RECIPES])
def test_scores_equal_sentence_transformers(
    golden_server: tuple[str, str, str],
    family: str,
    families: dict[str, Path],
    references: dict[str, list[dict[str, np.ndarray]]],
) -> None:
    url, backend, precision = golden_server
    model = str(families[family])
    served, expected = [], []
    for (query, documents), reference in zip(REQUESTS, references[family], strict=True):
        body = {"model": model, "query": query, "texts": documents, "raw_scores": True}
        tei = httpx.post(f"{url}/rerank", json=body, timeout=60)
        assert tei.status_code == 200, tei.text
        raw = _by_index(tei.json(), "score", len(documents))
        body = {"model": model, "query": query, "documents": documents}
        cohere = httpx.post(f"{url}/v2/rerank", json=body, timeout=60)
        assert cohere.status_code == 200, cohere.text
        final = _by_index(cohere.json()["results"], "relevance_score", len(documents))
        assert not np.isnan(raw).any() and not np.isnan(final).any()
        # The references must tell documents apart, or the comparisons below would be vacuous.
        assert np.ptp(reference["raw"]) > 1e-2
        served.append(raw)
        expected.append(reference["raw"])
        if (backend, precision) in TOLERANCE:
            tolerance = TOLERANCE[backend, precision]
            np.testing.assert_allclose(raw, reference["raw"], rtol=0, atol=tolerance)
            np.testing.assert_allclose(final, reference["final"], rtol=0, atol=tolerance)
            assert np.argsort(-raw, kind="stable").tolist() == np.argsort(-reference["raw"], kind="stable").tolist()
    if (backend, precision) not in TOLERANCE:  # int8: a coarse ranking check (see the module's docstring)
        served_all, expected_all = np.concatenate(served), np.concatenate(expected)
        diff = float(np.abs(served_all - expected_all).max())
        correlation = float(spearmanr(served_all, expected_all).statistic)
        print(f"golden {family} int8: spearman {correlation:.3f}, max |diff| {diff:.3f}")
        assert correlation >= INT8_MIN_SPEARMAN
        assert diff <= INT8_MAX_LOGIT_DIFF


def test_the_matrix_covers_exactly_the_verified_families(families: dict[str, Path]) -> None:
    configs = [json.loads((folder / "config.json").read_text()) for folder in families.values()]
    assert {config["model_type"] for config in configs} == set(VERIFIED)
    for config in configs:
        assert config["architectures"] == [VERIFIED[config["model_type"]].architecture]


# -- refusing what the matrix does not cover ----------------------------------------------------------------------


def _fake_model(folder: Path, config: dict, *, sentence_transformers: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if sentence_transformers:
        (folder / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "Transformer"}]))
    return folder


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "qwen3", "architectures": ["Qwen3ForSequenceClassification"]},
        {"model_type": "gemma", "architectures": ["GemmaForCausalLM"]},
        {"model_type": "roberta", "architectures": ["RobertaForSequenceClassification"]},
        {"model_type": "bert", "architectures": ["XLMRobertaForSequenceClassification"]},
    ],
    ids=["qwen3-head", "causal-lm", "roberta", "mismatched"],
)
def test_an_unverified_cross_encoder_is_refused_naming_it_and_the_supported_list(config: dict, tmp_path) -> None:
    folder = _fake_model(tmp_path / "model", config)
    with pytest.raises(ModelNotFound) as caught:
        resolve_model(str(folder), kind="cross-encoder")
    message = str(caught.value)
    assert config["architectures"][0] in message
    assert all(family.architecture in message for family in VERIFIED.values())


def test_bi_encoders_of_any_architecture_still_resolve(tmp_path) -> None:
    folder = _fake_model(
        tmp_path / "mpnet", {"model_type": "mpnet", "architectures": ["MPNetModel"]}, sentence_transformers=True
    )
    assert inspect_model("mpnet", folder).kind == "bi-encoder"


@pytest.mark.slow  # a `rerankd serve` subprocess, as conftest marks the others
def test_serve_refuses_an_unverified_architecture_at_start_up(tmp_path) -> None:
    config = {"model_type": "qwen3", "architectures": ["Qwen3ForSequenceClassification"], "id2label": {"0": "LABEL_0"}}
    folder = _fake_model(tmp_path / "qwen3-reranker", config)
    result = serve_once(["--model", str(folder)], tmp_path)
    assert result.returncode == 2
    assert "Qwen3ForSequenceClassification" in result.stderr
    assert "supported" in result.stderr
