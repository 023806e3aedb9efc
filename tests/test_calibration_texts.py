"""The packaged calibration set for static int8 quantization: its shape, determinism, length spread (in the default
model's tokens), share of relevant pairs, that it ships as package data, and that it shares no text with the
evaluation corpus."""

from __future__ import annotations

import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from conftest import DEBIAN_DATA, REPO
from tokenizers import Tokenizer

import rerankd
from rerankd.backends import calibration
from rerankd.backends.calibration import calibration_pairs, calibration_set, calibration_texts
from rerankd.models.presets import packaged_default_path

RUN = 12  # words: a shared run this long means copied text, not a common phrase


@pytest.fixture(scope="module")
def token_count():
    tokenizer = Tokenizer.from_file(str(packaged_default_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return lambda *texts: len(tokenizer.encode(*texts).ids)


def test_the_set_has_enough_queries_and_passages_and_1_to_3_relevant_each():
    texts = calibration_set()
    assert len(texts.queries) >= 48
    assert len(texts.passages) >= 96
    for query in range(len(texts.queries)):
        relevant = [passage for q, passage in texts.relevant if q == query]
        assert 1 <= len(relevant) <= 3, texts.queries[query]
        assert all(0 <= passage < len(texts.passages) for passage in relevant)
    assert len(set(texts.passages)) == len(texts.passages)


def test_same_arguments_give_the_same_lists_and_another_seed_another_order():
    assert calibration_pairs(256, seed=0) == calibration_pairs(256, seed=0)
    assert calibration_texts(256, seed=0) == calibration_texts(256, seed=0)
    assert calibration_pairs(256, seed=0) != calibration_pairs(256, seed=1)
    assert calibration_texts(256, seed=0) != calibration_texts(256, seed=1)


@pytest.mark.parametrize("count", [1, 7, 256, 1000])
def test_count_is_honoured(count: int):
    assert len(calibration_pairs(count)) == count
    assert len(calibration_texts(count)) == count


def test_a_count_below_one_is_refused():
    with pytest.raises(ValueError, match="count"):
        calibration_pairs(0)
    with pytest.raises(ValueError, match="count"):
        calibration_texts(-1)


def test_about_one_pair_in_four_is_relevant():
    texts = calibration_set()
    for count in (16, 256, 1000):
        pairs = calibration_pairs(count)
        indices = [(texts.queries.index(query), texts.passages.index(passage)) for query, passage in pairs]
        assert sum(pair in texts.relevant for pair in indices) == round(count / 4)


def test_pairs_use_every_passage_and_span_short_to_long(token_count):
    pairs = calibration_pairs(256)
    assert {passage for _, passage in pairs} == set(calibration_set().passages)
    lengths = sorted(token_count(query, passage) for query, passage in pairs)
    assert lengths[0] < 40
    assert lengths[-1] > 200
    # not just a few outliers: at least a fifth of the pairs short (< 60 tokens) and a fifth long (> 200)
    assert sum(length < 60 for length in lengths) >= len(lengths) / 5
    assert sum(length > 200 for length in lengths) >= len(lengths) / 5


def test_texts_hold_every_query_and_passage_when_count_allows(token_count):
    texts = calibration_set()
    everything = set(texts.queries) | set(texts.passages)
    sample = calibration_texts(len(everything))
    assert set(sample) == everything
    lengths = [token_count(text) for text in sample]
    assert min(lengths) < 15 and max(lengths) > 200


def test_the_json_is_declared_package_data():
    # An editable install reads the source tree; a wheel carries only what package-data names.
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["rerankd"]
    shipped = Path(calibration.__file__).with_name("calibration_texts.json")
    assert shipped.is_file()
    relative = shipped.relative_to(Path(rerankd.__file__).parent).as_posix()
    assert any(fnmatch(relative, pattern) for pattern in patterns)


@pytest.mark.skipif(not (DEBIAN_DATA / "corpus.jsonl").exists(), reason="evaluation corpus not present")
def test_no_passage_or_query_shares_a_12_word_run_with_the_evaluation_corpus():
    corpus_runs: set[tuple[str, ...]] = set()
    with (DEBIAN_DATA / "corpus.jsonl").open() as corpus:
        for line in corpus:
            corpus_runs.update(_runs(json.loads(line)["text"]))
    texts = calibration_set()
    shared = {text[:60]: run for text in texts.passages + texts.queries for run in _runs(text) & corpus_runs}
    assert not shared


def _runs(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(words[start : start + RUN]) for start in range(len(words) - RUN + 1)}
