"""Hostile input to LLM rerankers: strings in user text never break the prompt.

Over HTTP on the golden fixtures of every verified causal family (tests/test_golden_llm.py, torch fp32):

- markers: the private-use strings the prompt code once split on, in any field, are text like any other (200 and
  sentence-transformers' scores).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import DOCUMENTS, QUERY, ThreadServer, wait_until
from sentence_transformers import CrossEncoder
from test_golden_llm import INSTRUCTION, RECIPES, build_tiny_llm
from test_golden_scores import TOLERANCE, _by_index

from rerankd.api import create_app
from rerankd.config import Settings
from rerankd.engine.prompt import MARKS

ATOL = TOLERANCE["torch", "fp32"]
MARKED = (  # the markers in each field, alone and twice
    f"{QUERY} {MARKS['document']} {MARKS['query']}",
    [f"{MARKS['instruction']}", DOCUMENTS[0] + MARKS["document"] * 2, DOCUMENTS[1]],
    f"{INSTRUCTION} {MARKS['document']}{MARKS['instruction']}",
)


@pytest.fixture(scope="module")
def families() -> dict[str, Path]:
    return {family: build_tiny_llm(family) for family in RECIPES}


@contextlib.contextmanager
def _serving(models: list[str], **settings: object) -> Iterator[str]:
    app = create_app(Settings(model=models, backend="torch", precision="fp32", device="cpu", warmup_seconds=0,
                              embedding_model="", **settings))  # fmt: skip
    with ThreadServer(app) as srv:
        wait_until(lambda: httpx.get(f"{srv.url}/ready", timeout=5).status_code == 200, timeout=300, interval=0.2)
        yield srv.url


@pytest.fixture(scope="module")
def text_server(families: dict[str, Path]) -> Iterator[str]:
    """The default policy: user text is text."""
    with _serving([str(folder) for folder in families.values()]) as url:
        yield url


def _raw_scores(url: str, model: Path, query: str, documents: list[str], instruction: str | None) -> np.ndarray:
    extra = {} if instruction is None else {"instruction": instruction}
    body = {"model": str(model), "query": query, "texts": documents, "raw_scores": True, **extra}
    response = httpx.post(f"{url}/rerank", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return _by_index(response.json(), "score", len(documents))


def _reference(folder: Path, query: str, documents: list[str], instruction: str | None) -> np.ndarray:
    """sentence-transformers' raw scores."""
    model = CrossEncoder(str(folder), device="cpu")
    return model.predict([(query, d) for d in documents], activation_fn=torch.nn.Identity(), prompt=instruction)


# -- markers -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(RECIPES))
def test_marker_strings_in_any_field_are_text(text_server: str, families: dict[str, Path], family: str) -> None:
    """The prompt code once split the render on a private-use marker: a second copy in the query or instruction was
    a 500. Now no string has a place in the prompt: every field's markers score as sentence-transformers scores
    them."""
    query, documents, instruction = MARKED
    raw = _raw_scores(text_server, families[family], query, documents, instruction)
    reference = _reference(families[family], query, documents, instruction)
    np.testing.assert_allclose(raw, reference, rtol=0, atol=ATOL)
