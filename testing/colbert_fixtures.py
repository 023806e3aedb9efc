"""Model folders built offline from the packaged all-MiniLM-L6-v2 body with seeded heads, in the layouts users
bring: a ColBERT as PyLate 1.6 saves it, a Stanford ColBERT checkpoint (`HF_ColBERT`), and a bi-encoder with a
sentence-transformers Dense projection. Their scores are not relevance: for score-equality tests only.

The PyLate layout is written file for file as PyLate 1.6.0 writes it (checked against `pylate.models.ColBERT(...)
.save(...)`): the body with `[Q] ` and `[D] ` added to the vocabulary, `modules.json` naming
`pylate.models.Dense.Dense`, `1_Dense/` and the settings in `config_sentence_transformers.json`.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from rerankd.cachedir import build_once
from rerankd.config import default_cache_dir
from rerankd.models.presets import packaged_default_path

FIXTURE_VERSION = 1
HIDDEN = 384  # all-MiniLM-L6-v2


def _projection(out_features: int, seed: int, *, bias: bool = False):
    import torch

    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, HIDDEN, generator=generator) / HIDDEN**0.5
    tensors = {"linear.weight": weight.contiguous()}
    if bias:
        tensors["linear.bias"] = (torch.randn(out_features, generator=generator) * 0.1).contiguous()
    return tensors


def _body(folder: Path, *, added: list[str] = (), prefix: str = "") -> None:
    """The MiniLM body (and its tokenizer), with `added` tokens as PyLate adds its markers; seeded."""
    import torch
    from tokenizers import AddedToken
    from transformers import AutoModel, AutoTokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModel.from_pretrained(packaged_default_path())
        tokenizer = AutoTokenizer.from_pretrained(packaged_default_path())
        if added:
            tokenizer.add_tokens([AddedToken(token, normalized=True, special=False) for token in added])
            model.resize_token_embeddings(len(tokenizer))
    if prefix:  # Stanford checkpoints keep the body under `bert.` beside the projection
        from safetensors.torch import save_file

        state = {f"{prefix}{key}": value.contiguous() for key, value in model.state_dict().items()}
        save_file({**state, **_projection(128, seed=2)}, str(folder / "model.safetensors"))
        config = model.config.to_dict() | {"architectures": ["HF_ColBERT"]}
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    else:
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_pylate_colbert(cache_dir: Path | None = None, *, document_length: int = 180) -> Path:
    """A ColBERT in PyLate 1.6's layout: Transformer + PyLate Dense (384 -> 128, no bias), MaxSim."""
    target = (cache_dir or default_cache_dir()) / "fixtures" / f"colbert-pylate-d{document_length}-v{FIXTURE_VERSION}"

    def build(folder: Path) -> None:
        from safetensors.torch import save_file

        _body(folder, added=["[Q] ", "[D] "])
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
        ]
        (folder / "modules.json").write_text(json.dumps(modules, indent=2))
        (folder / "1_Dense").mkdir()
        dense = {"in_features": HIDDEN, "out_features": 128, "bias": False}
        dense |= {"activation_function": "torch.nn.modules.linear.Identity", "use_residual": False}
        (folder / "1_Dense" / "config.json").write_text(json.dumps(dense, indent=4))
        save_file(_projection(128, seed=1), str(folder / "1_Dense" / "model.safetensors"))
        settings = {
            "prompts": {"query": "", "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "MaxSim",
            "query_prefix": "[Q] ",
            "document_prefix": "[D] ",
            "query_length": 32,
            "document_length": document_length,
            "attend_to_expansion_tokens": False,
            "skiplist_words": list(string.punctuation),
            "do_query_expansion": True,
        }
        (folder / "config_sentence_transformers.json").write_text(json.dumps(settings, indent=2))
        body = {"max_seq_length": 256, "do_lower_case": False}
        (folder / "sentence_bert_config.json").write_text(json.dumps(body, indent=4))

    return build_once(target, build, done="modules.json")


def build_tiny_modernbert_colbert(cache_dir: Path | None = None) -> Path:
    """A tiny ModernBERT ColBERT (2 layers, hidden 32, one sliding-window layer) in PyLate's layout, random and
    seeded, with the packaged model's WordPiece vocabulary: the ModernBERT family's golden fixture."""
    target = (cache_dir or default_cache_dir()) / "fixtures" / f"colbert-modernbert-tiny-v{FIXTURE_VERSION}"

    def build(folder: Path) -> None:
        import torch
        from safetensors.torch import save_file
        from tokenizers import AddedToken
        from transformers import AutoTokenizer, ModernBertConfig, ModernBertModel

        tokenizer = AutoTokenizer.from_pretrained(
            packaged_default_path(), model_max_length=128, model_input_names=["input_ids", "attention_mask"]
        )
        tokenizer.add_tokens([AddedToken(token, normalized=True, special=False) for token in ("[Q] ", "[D] ")])
        config = ModernBertConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=128, local_attention=16, global_attn_every_n_layers=2,
            initializer_range=0.2, pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id, bos_token_id=None, eos_token_id=None,
        )  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            ModernBertModel(config).eval().save_pretrained(folder)
            weight = torch.randn(16, 32) / 32**0.5
        tokenizer.save_pretrained(folder)
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
        ]
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Dense").mkdir()
        dense = {"in_features": 32, "out_features": 16, "bias": False}
        dense |= {"activation_function": "torch.nn.modules.linear.Identity", "use_residual": False}
        (folder / "1_Dense" / "config.json").write_text(json.dumps(dense))
        save_file({"linear.weight": weight.contiguous()}, str(folder / "1_Dense" / "model.safetensors"))
        settings = {
            "prompts": {"query": "", "document": ""},
            "similarity_fn_name": "MaxSim",
            "query_prefix": "[Q] ",
            "document_prefix": "[D] ",
            "query_length": 16,
            "document_length": 48,
            "attend_to_expansion_tokens": False,
            "skiplist_words": list(string.punctuation),
            "do_query_expansion": True,
        }
        (folder / "config_sentence_transformers.json").write_text(json.dumps(settings))
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))

    return build_once(target, build, done="modules.json")


def build_stanford_colbert(cache_dir: Path | None = None) -> Path:
    """A Stanford ColBERT checkpoint: `HF_ColBERT`, the body under `bert.` and `linear.weight` in one file, and
    artifact.metadata (queries attend to their [MASK] expansion here, unlike the PyLate fixture)."""
    target = (cache_dir or default_cache_dir()) / "fixtures" / f"colbert-stanford-v{FIXTURE_VERSION}"

    def build(folder: Path) -> None:
        _body(folder, prefix="bert.")
        metadata = {
            "query_token_id": "[unused0]",
            "doc_token_id": "[unused1]",
            "query_maxlen": 24,
            "doc_maxlen": 120,
            "dim": 128,
            "similarity": "cosine",
            "attend_to_mask_tokens": True,
            "mask_punctuation": True,
        }
        (folder / "artifact.metadata").write_text(json.dumps(metadata, indent=2))

    return build_once(target, build, done="artifact.metadata")


def build_dense_bi_encoder(cache_dir: Path | None = None) -> Path:
    """all-MiniLM-L6-v2 with a seeded Dense projection (384 -> 256, tanh, bias) between Pooling and Normalize,
    saved by sentence-transformers itself."""
    target = (cache_dir or default_cache_dir()) / "fixtures" / f"bi-encoder-dense-v{FIXTURE_VERSION}"

    def build(folder: Path) -> None:
        import torch
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.models import Dense

        model = SentenceTransformer(str(packaged_default_path()), device="cpu")
        tensors = _projection(256, seed=3, bias=True)
        dense = Dense(HIDDEN, 256, bias=True, activation_function=torch.nn.Tanh())
        dense.linear.weight.data.copy_(tensors["linear.weight"])
        dense.linear.bias.data.copy_(tensors["linear.bias"])
        modules = list(model)
        model = SentenceTransformer(modules=[*modules[:2], dense, *modules[2:]], device="cpu")
        model.save(str(folder))

    return build_once(target, build, done="modules.json")
