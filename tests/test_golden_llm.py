"""Golden scores for LLM rerankers: every verified causal-LM family, on every backend, equals sentence-transformers.

For each family in `rerankd.models.families.VERIFIED_CAUSAL` a tiny random-initialised causal LM (2 layers, hidden
32) is built offline with a small byte-level BPE tokenizer that carries the template's special tokens, then saved in
sentence-transformers' CrossEncoder format (Transformer + `1_LogitScore`, `chat_template.jinja`), shaped after the
public model of the family:

    qwen3   Qwen3-Reranker: system prompt, `<Instruct>` (default in the template), "yes" - "no", `<think>` tokens
    qwen2   mxbai-rerank-v2: instruction line only when given, "1" - "0" (token ids from the LogitScore config)
    gemma   bge-reranker-v2-gemma: `<bos>`, the instruction after the document, the "Yes" logit alone

The server's scores over HTTP (`/rerank` raw logits, `/v2/rerank` sigmoid) are compared with `CrossEncoder.predict`
on the same pairs, with and without an `instruction`, including a document and a query that overflow the window
(so the right-truncation and the restored template tail are compared too). Tolerances:

    torch fp32   1e-5 on logits and probabilities, and the same order
    onnx  fp32   1e-4, and the same order

int8 is refused for LLM rerankers: dynamic int8 moved the Qwen3 fixture's logits by up to 2.1 (Spearman 0.41 vs
fp32; Qwen2 0.64, Gemma 0.32 at most), so it is not served until a faithful recipe exists.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import DOCUMENTS, QUERY
from sentence_transformers import CrossEncoder
from test_golden_scores import TOLERANCE, _by_index, serving

from rerankd.cachedir import build_once
from rerankd.config import Settings, default_cache_dir
from rerankd.errors import ModelNotFound
from rerankd.models import resolve_model
from rerankd.models.families import VERIFIED_CAUSAL
from rerankd.models.resolve import inspect_model
from rerankd.models.templates import BGE_RERANKER_GEMMA, MXBAI_RERANK_V2, QWEN3_RERANKER, RerankTemplate

FIXTURE_VERSION = 3  # bump when a recipe below changes
WINDOW = 160  # tokens: the long document and the long query overflow it
ENGINES = [("torch", "fp32"), ("onnx", "fp32")]
LONG_QUERY = " ".join(["store data in a single file engine with key document edit"] * 6)  # fits every template
LONG_DOCUMENTS = [DOCUMENTS[0] * 4, DOCUMENTS[2] * 6, DOCUMENTS[1]]  # the first two overflow beside LONG_QUERY
INSTRUCTION = "Given a Debian package search, find packages that do what is asked"
REQUESTS = [
    (QUERY, [*DOCUMENTS, "Network file system server and tools."], None),
    (QUERY, DOCUMENTS, INSTRUCTION),
    (LONG_QUERY, LONG_DOCUMENTS, None),
]

_VOCABULARY = (
    "the a of to in and is for with on database store data lightweight sqlite library engine server strategy game "
    "ancient warfare tools edit menus alarm clock panel key value small footprint embedded applications query "
    "document package debian install system network file text search fast slow index find packages what asked "
    "given relevant passage answer yes no Yes No 0 1"
)
_WORDS = _VOCABULARY.split()


def _bpe_tokenizer(specials: list[str], template: str, **tokens: str):
    """A byte-level BPE tokenizer (Qwen's and Gemma's kind) trained on a small corpus and the template itself."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    texts = " ".join([QUERY, LONG_QUERY, INSTRUCTION, *DOCUMENTS]).split()
    corpus = [" ".join(rng.choice(_WORDS + texts) for _ in range(rng.randint(3, 16))) for _ in range(600)]
    corpus += [template] * 5 + ["yes no Yes No 1 0"] * 50
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=specials, initial_alphabet=alphabet)
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=WINDOW, **tokens)
    fast.chat_template = template
    return fast


SIZE = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
SIZE |= {"num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": WINDOW, "initializer_range": 0.2}


def _qwen(config_class: type, template: RerankTemplate, *, tied: bool, added: tuple[str, ...] = ()):
    tokenizer = _bpe_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], template.chat_template, eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )  # fmt: skip
    tokenizer.add_tokens(list(added))  # added tokens that are not special, as Qwen3's `<think>`
    config = config_class(
        vocab_size=len(tokenizer), tie_word_embeddings=tied, pad_token_id=tokenizer.pad_token_id, **SIZE
    )
    return config, tokenizer, template


def _qwen3():
    from transformers import Qwen3Config

    # Qwen3-Reranker-0.6B ties its embeddings; its template's `<think>` tags are added tokens, not special ones
    return _qwen(Qwen3Config, QWEN3_RERANKER, tied=True, added=("<think>", "</think>"))


def _qwen2():
    from transformers import Qwen2Config

    return _qwen(Qwen2Config, MXBAI_RERANK_V2, tied=False)


def _gemma():
    from transformers import GemmaConfig

    tokenizer = _bpe_tokenizer(
        ["<pad>", "<eos>", "<bos>"], BGE_RERANKER_GEMMA.chat_template, bos_token="<bos>", eos_token="<eos>",
        pad_token="<pad>",
    )  # fmt: skip
    config = GemmaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **SIZE)
    return config, tokenizer, BGE_RERANKER_GEMMA


RECIPES: dict[str, Callable] = {"qwen3": _qwen3, "qwen2": _qwen2, "gemma": _gemma}


def build_tiny_llm(family: str) -> Path:
    """The family's tiny LLM reranker in sentence-transformers' CrossEncoder format, built once into the cache.
    Its `hf/` subfolder is the same model as a plain transformers folder without a chat template (a hub repository
    that only has a model card's prompt code): presets serve such folders with `rerankd.models.templates`."""
    target = default_cache_dir() / "fixtures" / f"golden-llm-{family}-v{FIXTURE_VERSION}"

    def build(folder: Path) -> None:
        from transformers import AutoModelForCausalLM

        config, tokenizer, template = RECIPES[family]()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config).eval()
        plain = folder / "hf"
        model.save_pretrained(plain)
        tokenizer.save_pretrained(plain)
        CrossEncoder(str(plain), device="cpu").save(str(folder))  # Transformer + LogitScore ("yes"/"no")
        answers = [tokenizer.convert_tokens_to_ids(token) if token else None for token in _answers(template)]
        (folder / "1_LogitScore" / "config.json").write_text(
            json.dumps({"true_token_id": answers[0], "false_token_id": answers[1]})
        )
        (plain / "chat_template.jinja").unlink()

    return build_once(target, build, done="modules.json")


def _answers(template: RerankTemplate) -> tuple[str, str | None]:
    return template.true_token, template.false_token


@pytest.fixture(scope="module")
def families() -> dict[str, Path]:
    return {family: build_tiny_llm(family) for family in RECIPES}


@pytest.fixture(scope="module")
def references(families: dict[str, Path]) -> dict[str, list[np.ndarray]]:
    """family -> per request: sentence-transformers' raw score (the logit difference)."""
    answers = {}
    for family, folder in families.items():
        model = CrossEncoder(str(folder), device="cpu")
        answers[family] = [
            np.asarray(
                model.predict([(q, d) for d in documents], activation_fn=torch.nn.Identity(), prompt=instruction)
            )
            for q, documents, instruction in REQUESTS
        ]
    return answers


@pytest.fixture(scope="module", params=ENGINES, ids=["-".join(engine) for engine in ENGINES])
def llm_server(request: pytest.FixtureRequest, families: dict[str, Path]) -> Iterator[tuple[str, str, str]]:
    """One server per engine: every LLM family, and the ce-fixture for cascades and refusals."""
    backend, precision = request.param
    with serving([*(str(folder) for folder in families.values()), "ce-fixture"], backend, precision) as url:
        yield url, backend, precision


@pytest.mark.parametrize("family", list(RECIPES))
def test_llm_scores_equal_sentence_transformers(
    llm_server: tuple[str, str, str],
    family: str,
    families: dict[str, Path],
    references: dict[str, list[np.ndarray]],
) -> None:
    url, backend, precision = llm_server
    model = str(families[family])
    for (query, documents, instruction), reference in zip(REQUESTS, references[family], strict=True):
        extra = {} if instruction is None else {"instruction": instruction}
        body = {"model": model, "query": query, "texts": documents, "raw_scores": True, "return_text": True, **extra}
        tei = httpx.post(f"{url}/rerank", json=body, timeout=60)
        assert tei.status_code == 200, tei.text
        raw = _by_index(tei.json(), "score", len(documents))
        assert {item["text"] for item in tei.json()} == set(documents)  # the template never leaks into documents
        body = {"model": model, "query": query, "documents": documents, "return_documents": True, **extra}
        cohere = httpx.post(f"{url}/v2/rerank", json=body, timeout=60)
        assert cohere.status_code == 200, cohere.text
        final = _by_index(cohere.json()["results"], "relevance_score", len(documents))
        assert [r["document"]["text"] for r in cohere.json()["results"]] == [
            documents[r["index"]] for r in cohere.json()["results"]
        ]
        assert np.ptp(reference) > 1e-2  # the reference tells documents apart, so the comparison is not vacuous
        tolerance = TOLERANCE[backend, precision]
        np.testing.assert_allclose(raw, reference, rtol=0, atol=tolerance)
        np.testing.assert_allclose(final, 1 / (1 + np.exp(-reference)), rtol=0, atol=tolerance)
        assert np.argsort(-raw, kind="stable").tolist() == np.argsort(-reference, kind="stable").tolist()


def test_int8_is_refused_for_llm_rerankers(families: dict[str, Path]) -> None:
    from rerankd.backends import load_backend

    spec = resolve_model(str(families["qwen3"]))
    settings = Settings(model=[str(spec.path)], backend="onnx", precision="int8", device="cpu")
    with pytest.raises(ValueError, match="int8 is not verified for LLM rerankers"):
        load_backend(spec, settings)


def test_the_llm_matrix_covers_exactly_the_verified_causal_families(families: dict[str, Path]) -> None:
    configs = [json.loads((folder / "config.json").read_text()) for folder in families.values()]
    assert {config["model_type"] for config in configs} == set(VERIFIED_CAUSAL)
    for config in configs:
        assert config["architectures"] == [VERIFIED_CAUSAL[config["model_type"]].architecture]


def test_the_fixtures_overflow_the_window(families: dict[str, Path]) -> None:
    """The comparisons above cover truncation: beside the long query, the two long documents do not fit (so the
    right-truncation and the restored template tail are compared) and the short one does."""
    from transformers import AutoTokenizer

    for family, folder in families.items():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        lengths = [
            len(
                tokenizer.apply_chat_template(
                    [{"role": "query", "content": LONG_QUERY}, {"role": "document", "content": d}]
                )["input_ids"]
            )
            for d in LONG_DOCUMENTS
        ]
        assert [length > WINDOW for length in lengths] == [True, True, False], (family, lengths)


def test_a_causal_lm_whose_template_has_no_reranking_roles_is_refused(families: dict[str, Path], tmp_path) -> None:
    folder = tmp_path / "chat-model"
    folder.mkdir()
    for item in families["qwen3"].iterdir():
        if item.is_file() and item.name != "chat_template.jinja":
            (folder / item.name).write_bytes(item.read_bytes())
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m.role in ['system', 'user', 'assistant'] %}<|im_start|>{{ m.role }}\n"
        "{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"  # a chat model's template: no query/document roles
    )
    from rerankd.engine.tokenize import Tokenizer

    spec = resolve_model(str(folder))
    assert spec.kind == "causal-lm"
    with pytest.raises(ModelNotFound, match="'query' and one 'document'"):
        Tokenizer(spec)


def test_instruction_is_refused_by_a_model_without_one_and_bounded(llm_server, families: dict[str, Path]) -> None:
    url, backend, _ = llm_server
    if backend != "torch":
        pytest.skip("request checks: one engine is enough")
    body = {"query": QUERY, "documents": DOCUMENTS[:2], "instruction": "find it"}
    refused = httpx.post(f"{url}/v2/rerank", json={**body, "model": "ce-fixture"}, timeout=30)
    assert refused.status_code == 400 and refused.json()["error"]["message"].startswith("instruction:")
    too_long = httpx.post(
        f"{url}/v2/rerank", json={**body, "model": str(families["qwen3"]), "instruction": "x" * 40_000}, timeout=30
    )
    assert too_long.status_code == 413 and too_long.json()["error"]["message"].startswith("instruction:")


def test_a_cascade_scores_the_first_models_top_k_with_the_llm(llm_server, families: dict[str, Path]) -> None:
    """`hybrid` with a served first-stage model: the cross-encoder picks K, the LLM scores exactly those."""
    url, backend, _ = llm_server
    if backend != "torch":
        pytest.skip("request checks: one engine is enough")
    llm, documents = str(families["qwen3"]), [*DOCUMENTS, "Network file system server and tools."]
    first = httpx.post(f"{url}/v2/rerank", json={"model": "ce-fixture", "query": QUERY, "documents": documents})
    direct = httpx.post(f"{url}/v2/rerank", json={"model": llm, "query": QUERY, "documents": documents})
    body = {"model": llm, "query": QUERY, "documents": documents, "strategy": "hybrid", "candidates": 3}
    cascade = httpx.post(f"{url}/v2/rerank", json={**body, "first_stage_model": "ce-fixture"}, timeout=60)
    assert cascade.status_code == 200, cascade.text
    assert "prefilter=model:rerankd/ce-fixture" in cascade.headers["X-Rerankd-Strategy"]
    top3 = {r["index"] for r in first.json()["results"][:3]}
    results = cascade.json()["results"]
    assert {r["index"] for r in results[:3]} == top3 and not any(r.get("cut_by_prefilter") for r in results[:3])
    assert all(r["cut_by_prefilter"] for r in results[3:])
    llm_scores = {r["index"]: r["relevance_score"] for r in direct.json()["results"]}
    for item in results[:3]:
        assert item["relevance_score"] == pytest.approx(llm_scores[item["index"]], abs=1e-6)
    unknown = httpx.post(f"{url}/v2/rerank", json={**body, "first_stage_model": "no-such-model"}, timeout=30)
    assert unknown.status_code == 400 and unknown.json()["error"]["message"].startswith("first_stage_model:")


@pytest.mark.parametrize("family", list(RECIPES))
def test_a_preset_template_serves_a_plain_folder_as_the_sentence_transformers_folder(
    family: str, families: dict[str, Path], references: dict[str, list[np.ndarray]]
) -> None:
    """A hub folder without a reranking template, served with the preset's: the same ids, so the same scores."""
    import asyncio

    from rerankd.engine.engine import Engine

    _, _, template = RECIPES[family]()
    plain = inspect_model("plain", families[family] / "hf", template=template)
    assert plain.kind == "causal-lm" and plain.chat_template == template.chat_template
    packaged = resolve_model(str(families[family]))
    assert (plain.true_token_id, plain.false_token_id) == (packaged.true_token_id, packaged.false_token_id)
    settings = Settings(model=["plain"], backend="torch", precision="fp32", device="cpu", embedding_model="")
    engine = Engine.load(plain, settings)
    try:
        for (query, documents, instruction), reference in zip(REQUESTS, references[family], strict=True):
            prepared = engine.prepare_sync(engine.query_tokens(query), documents, instruction=instruction)
            scores = asyncio.run(engine.score(prepared, raw=True))
            np.testing.assert_allclose(scores, reference, rtol=0, atol=TOLERANCE["torch", "fp32"])
    finally:
        engine.close()
