"""Long documents: chunk boundaries by hand, and a document's score = the best of its chunks' scores, in every
dialect, through a real server configured with small chunks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ThreadServer, is_ready, wait_until
from sentence_transformers import CrossEncoder

from rerankd.api import create_app
from rerankd.config import Settings
from rerankd.pipeline.chunking import ChunkRule, split

# Twenty words that are one token each in the MiniLM vocabulary, so chunks can be written down by hand.
WORDS = [
    *("house", "river", "green", "table", "music", "water", "light", "stone", "bread", "chair"),
    *("cloud", "horse", "paper", "glass", "world", "night", "sound", "field", "money", "story"),
]
DOCUMENT = " ".join(WORDS)
QUERY = "a quiet river near the stone house"
SIZE, OVERLAP = 8, 2  # stride 6: chunks start at words 0, 6 and 12


def by_hand(max_chunks: int = 10) -> list[str]:
    return [" ".join(WORDS[start : start + SIZE]) for start in (0, 6, 12)][:max_chunks]


def spans_of(words: list[str], pieces: dict[int, int] | None = None) -> list[tuple[int, int, int]]:
    """Token spans of space-separated words; `pieces` splits word i into that many word pieces."""
    spans, position = [], 0
    for number, word in enumerate(words):
        count = (pieces or {}).get(number, 1)
        step = len(word) // count
        for piece in range(count):
            end = position + len(word) if piece == count - 1 else position + step * (piece + 1)
            spans.append((position + step * piece, end, number))
        position += len(word) + 1
    return spans


def test_split_by_hand() -> None:
    spans, capped = split(spans_of(WORDS), ChunkRule(SIZE, OVERLAP, 10))
    assert [DOCUMENT[a:b] for a, b in spans] == by_hand() and not capped
    spans, capped = split(spans_of(WORDS), ChunkRule(SIZE, OVERLAP, 2))
    assert [DOCUMENT[a:b] for a, b in spans] == by_hand(2) and capped
    assert split(spans_of(WORDS[:8]), ChunkRule(SIZE, OVERLAP, 10)) == ([], False)  # fits: scored as it is


def test_chunks_never_split_a_word() -> None:
    words = ["aa", "bbbbbb", "cc", "dd", "ee", "ff", "gg"]
    tokens = spans_of(words, {1: 3})  # "bbbbbb" is three pieces: tokens 1, 2, 3
    text = " ".join(words)
    spans, _ = split(tokens, ChunkRule(3, 1, 10))
    # A chunk ending inside "bbbbbb" ends before it instead; every chunk holds whole words.
    assert [text[a:b] for a, b in spans] == ["aa", "bbbbbb", "cc dd ee", "ee ff gg"]


@pytest.fixture(scope="module")
def chunk_server(ce_fixture_path: Path) -> Iterator[str]:
    settings = Settings(  # torch: compared with sentence-transformers' scores
        model=[str(ce_fixture_path)], backend="torch", warmup_seconds=0, chunk_tokens=SIZE, chunk_overlap_tokens=OVERLAP
    )
    app = create_app(settings)
    with ThreadServer(app) as running:
        wait_until(lambda: is_ready(running.url), timeout=180, interval=0.2)
        yield running.url


@pytest.fixture(scope="module")
def reference(ce_fixture_path: Path) -> CrossEncoder:
    return CrossEncoder(str(ce_fixture_path), device="cpu")


def test_words_are_single_tokens(reference: CrossEncoder) -> None:
    assert len(reference.tokenizer(DOCUMENT, add_special_tokens=False)["input_ids"]) == len(WORDS)


def test_chunked_score_is_the_best_chunk_in_every_dialect(chunk_server: str, reference: CrossEncoder) -> None:
    chunk_scores = reference.predict([(QUERY, chunk) for chunk in by_hand()])
    short = "bread and water"
    expected = {0: float(np.max(chunk_scores)), 1: float(reference.predict([(QUERY, short)])[0])}
    bodies = {
        "/v2/rerank": {"query": QUERY, "documents": [DOCUMENT, short], "chunking": True},
        "/v1/rerank": {"query": QUERY, "documents": [{"text": DOCUMENT}, {"text": short}], "max_chunks_per_doc": 10},
        "/rerank": {"query": QUERY, "texts": [DOCUMENT, short], "chunking": True},
    }
    for path, body in bodies.items():
        response = httpx.post(f"{chunk_server}{path}", json=body, timeout=60)
        assert response.status_code == 200, response.text
        answer = response.json()
        items = answer if path == "/rerank" else answer["results"]
        got = {item["index"]: item.get("relevance_score", item.get("score")) for item in items}
        assert got == pytest.approx(expected, abs=1e-5), path
        assert "chunks=4" in response.headers["x-rerankd-chunking"]  # three chunks + the short document
        if path != "/rerank":
            assert answer["meta"]["rerankd"]["chunking"]["split_documents"] == 1


def test_chunk_cap_and_truncation(chunk_server: str, reference: CrossEncoder) -> None:
    capped = float(np.max(reference.predict([(QUERY, chunk) for chunk in by_hand(2)])))
    body = {"query": QUERY, "texts": [DOCUMENT], "chunking": True, "max_chunks_per_doc": 2}
    answer = httpx.post(f"{chunk_server}/rerank", json=body, timeout=60).json()
    assert answer[0]["score"] == pytest.approx(capped, abs=1e-5)
    refused = httpx.post(f"{chunk_server}/rerank", json={**body, "truncate": False}, timeout=60)
    assert refused.status_code == 413
    assert "texts[0]" in refused.json()["error"]["message"]
    assert "max_chunks_per_doc=2" in refused.json()["error"]["message"]


def test_without_chunking_documents_are_truncated_as_before(chunk_server: str, reference: CrossEncoder) -> None:
    plain = httpx.post(f"{chunk_server}/v2/rerank", json={"query": QUERY, "documents": [DOCUMENT]}, timeout=60)
    assert plain.json()["results"][0]["relevance_score"] == pytest.approx(
        float(reference.predict([(QUERY, DOCUMENT)])[0]), abs=1e-5
    )
    assert "x-rerankd-chunking" not in plain.headers
