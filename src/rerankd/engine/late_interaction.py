"""Late interaction (ColBERT): queries and documents encoded apart into token vectors, scored by MaxSim.

Inputs are built as sentence-transformers' MultiVectorEncoder builds them (which equals PyLate): the query marker
after the first special token, queries cut to `query_length` and padded to it with the mask token (scored by
MaxSim; attended to by the encoder only with `attend_to_expansion`), documents cut to `document_length` with the
skiplist's tokens (punctuation) left out of MaxSim. A document's vectors depend on it alone, so they are cached
(engine/vector_cache.py): a cached document costs neither tokenizing nor the encoder.

The batching queue hands back one fixed-shape row per input, and a text's token vectors vary in length, so the
worker leaves them on the input itself (`VectorInput.vectors`); its row is a placeholder.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rerankd.backends import Backend
from rerankd.engine.tokenize import Tokenizer, Tokens
from rerankd.engine.vector_cache import CachedDocument, VectorCache
from rerankd.metrics import Metrics
from rerankd.models import ModelSpec

MAXSIM_CHUNK_VECTORS = 65_536  # document vectors scored at once: bounds the similarity matrix (x query tokens)


@dataclass(slots=True, eq=False)
class VectorInput:
    """One text for the encoder; `vectors` (its scored token vectors) are filled by the worker or the cache."""

    ids: np.ndarray  # int32; empty for a cached document
    type_ids: np.ndarray | None
    attention: np.ndarray  # int64 per token: what the encoder attends to
    keep: np.ndarray  # bool per token: whose vectors MaxSim scores
    tokens: int
    truncated: bool = False
    key: bytes | None = None  # a document's cache key
    vectors: np.ndarray | None = None

    def __len__(self) -> int:
        return self.tokens


class LateInteraction:
    """Builds a late-interaction model's inputs and scores documents by MaxSim, with a document-vector cache."""

    def __init__(self, spec: ModelSpec, tokenizer: Tokenizer, cache: VectorCache | None, metrics: Metrics | None):
        from transformers import AutoTokenizer  # the vocabulary, for the marker, mask and skiplist ids

        assert spec.late is not None, "a late-interaction model needs its settings"
        self.spec, self.settings, self.tokenizer = spec, spec.late, tokenizer
        self.cache = cache
        self._metrics = metrics
        vocabulary = AutoTokenizer.from_pretrained(spec.path)
        self._query_marker = _marker(vocabulary, self.settings.query_prefix)
        self._document_marker = _marker(vocabulary, self.settings.document_prefix)
        mask = vocabulary.mask_token_id if vocabulary.mask_token_id is not None else vocabulary.eos_token_id
        if self.settings.expansion and mask is None:
            raise ValueError(f"{spec.name}: query expansion needs a mask (or end) token; the tokenizer has neither")
        self._mask_id = int(mask or 0)
        unknown = vocabulary.unk_token_id
        skip = [vocabulary.convert_tokens_to_ids(word) for word in self.settings.skiplist_words]
        self._skip_ids = np.asarray(sorted({i for i in skip if i is not None and i != unknown}), dtype=np.int32)
        self._specials = tokenizer.special_tokens(pair=False)

    # -- inputs ---------------------------------------------------------------------------------------------------

    def encode_query(self, query: Tokens) -> VectorInput:
        length = self.settings.query_length
        if self._query_marker is None:  # a text prompt: tokenized with the query
            assert query.text is not None, "a text query prompt needs the query text: use Engine.query_tokens"
            query = self.tokenizer.tokens([self.settings.query_prefix + query.text])[0]
            text = query.ids
        else:
            text = np.concatenate([self._query_marker, query.ids]).astype(np.int32)
        encoded = self.tokenizer.single(Tokens(text[: length - self._specials], True))
        real = len(encoded.ids)
        pad = length - real if self.settings.expansion else 0
        ids = np.concatenate([encoded.ids, np.full(pad, self._mask_id, dtype=np.int32)])
        type_ids = None if encoded.type_ids is None else np.concatenate([encoded.type_ids, np.zeros(pad, np.int32)])
        attention = np.ones(len(ids), dtype=np.int64)
        attention[real:] = int(self.settings.attend_to_expansion)
        truncated = len(text) > length - self._specials
        return VectorInput(ids, type_ids, attention, np.ones(len(ids), dtype=bool), len(ids), truncated)

    def encode_documents(self, documents: Sequence[str]) -> list[VectorInput]:
        """Inputs of `documents`: cached ones with their vectors, the rest tokenized (repeats share one input)."""
        cache = self.cache
        if cache is None:  # each document its own input, by position
            keys: list[bytes | int] = list(range(len(documents)))
            found: list[CachedDocument | None] = [None] * len(documents)
        else:
            keys = [cache.key(text) for text in documents]
            found = cache.get_many(keys)  # type: ignore[arg-type]
        missing = {key: documents[i] for i, (key, hit) in enumerate(zip(keys, found, strict=True)) if hit is None}
        fresh = dict(zip(missing, self._tokenize(list(missing.values()), list(missing)), strict=True))
        empty = np.empty(0, dtype=np.int32)
        inputs = [
            fresh[key]
            if hit is None
            else VectorInput(empty, None, empty, empty, hit.tokens, hit.truncated, key, hit.vectors)
            for key, hit in zip(keys, found, strict=True)
        ]
        if self._metrics and cache is not None:
            hits = len(documents) - sum(hit is None for hit in found)
            self._metrics.vector_cache_hits.labels(self.spec.name).inc(hits)
            self._metrics.vector_cache_misses.labels(self.spec.name).inc(len(documents) - hits)
        return inputs

    def _tokenize(self, documents: list[str], keys: list[bytes | int]) -> list[VectorInput]:
        marker = self._document_marker
        prefix = "" if marker is not None else self.settings.document_prefix
        room = self.tokenizer.room(pair=False) - (0 if marker is None else len(marker))
        inputs = []
        for key, tokens in zip(keys, self.tokenizer.encode_prefix([prefix + t for t in documents], room), strict=True):
            ids = tokens.ids if marker is None else np.concatenate([marker, tokens.ids]).astype(np.int32)
            encoded = self.tokenizer.single(Tokens(ids, tokens.complete))
            keep = ~np.isin(encoded.ids, self._skip_ids)
            attention = np.ones(len(encoded.ids), dtype=np.int64)
            cache_key = key if isinstance(key, bytes) else None
            inputs.append(
                VectorInput(encoded.ids, encoded.type_ids, attention, keep, len(encoded), encoded.truncated, cache_key)
            )
        return inputs

    # -- the encoder (the scheduler's worker thread) --------------------------------------------------------------

    def run_batch(self, backend: Backend, items: Sequence[VectorInput]) -> np.ndarray:
        """Encode a batch; each input's scored vectors are left on it. One placeholder row per input."""
        batch = self.tokenizer.collate(items, backend.width_multiple, [item.attention for item in items])  # type: ignore[arg-type]
        vectors = backend.forward(batch)
        for row, item in enumerate(items):
            item.vectors = vectors[row, : len(item.ids)][item.keep].astype(np.float32)  # a copy, not a view
        return np.zeros((len(items), 1), dtype=np.float32)

    # -- scoring --------------------------------------------------------------------------------------------------

    async def scores(
        self, inputs: Sequence[VectorInput], submit: Callable[[list[VectorInput]], Awaitable[np.ndarray]]
    ) -> np.ndarray:
        """MaxSim of the query (`inputs[0]`) with each document, encoding what the cache did not have."""
        query, documents = inputs[0], inputs[1:]
        todo = list({id(item): item for item in inputs if item.vectors is None}.values())
        if todo:
            await submit(todo)
        if self.cache is not None:
            for item in todo:
                if item.key is not None and item.vectors is not None:
                    self.cache.put(item.key, item.vectors, item.tokens, item.truncated)
        assert query.vectors is not None
        return maxsim(query.vectors, [item.vectors for item in documents])  # type: ignore[misc]


def maxsim(query: np.ndarray, documents: Sequence[np.ndarray]) -> np.ndarray:
    """Per document: the sum over query vectors of the best dot product with any of its vectors, in fp32."""
    scores = np.empty(len(documents), dtype=np.float32)
    query = query.astype(np.float32, copy=False)
    start = 0
    while start < len(documents):
        end, size = start, 0
        while end < len(documents) and (end == start or size + len(documents[end]) <= MAXSIM_CHUNK_VECTORS):
            size += len(documents[end])
            end += 1
        chunk = documents[start:end]
        stacked = np.concatenate(chunk).astype(np.float32, copy=False)
        similarity = stacked @ query.T  # (document vectors, query vectors)
        offsets = np.cumsum([0, *(len(vectors) for vectors in chunk[:-1])])
        scores[start:end] = np.maximum.reduceat(similarity, offsets, axis=0).sum(axis=1)
        start = end
    return scores


def _marker(vocabulary, prefix: str) -> np.ndarray | None:
    """A prefix that is one token of the vocabulary (`[Q] `, `[unused0]`) as its id, inserted as that token (as
    PyLate and Stanford ColBERT do); None for an empty or text prefix."""
    if not prefix.strip():
        return None if prefix else np.empty(0, dtype=np.int32)
    unknown = vocabulary.unk_token_id
    for candidate in (prefix, prefix.split(None, 1)[0]):
        token = vocabulary.convert_tokens_to_ids(candidate)
        if token is not None and token != unknown:
            return np.asarray([token], dtype=np.int32)
    return None
