"""Tokenization: (query, document) pairs or single texts to token ids, and padding into a `Batch`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import AutoTokenizer

from rerankd.backends import Batch
from rerankd.models import ModelSpec


@dataclass(frozen=True, slots=True)
class Encoded:
    """One model input. `truncated` says whether the tokenizer cut it to the model's window."""

    ids: list[int]
    type_ids: list[int] | None
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.ids)


class Tokenizer:
    """The model's own fast tokenizer, with sentence-transformers' truncation (longest first, model window)."""

    def __init__(self, spec: ModelSpec) -> None:
        self._tokenizer = AutoTokenizer.from_pretrained(spec.path)
        self.max_length = spec.max_length
        self.pad_id = int(self._tokenizer.pad_token_id or 0)
        self.uses_token_types = "token_type_ids" in self._tokenizer.model_input_names

    def encode_pairs(self, query: str, documents: Sequence[str]) -> list[Encoded]:
        return self._encode([query] * len(documents), list(documents))

    def encode_texts(self, texts: Sequence[str]) -> list[Encoded]:
        return self._encode(list(texts), None)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts without special tokens or truncation."""
        encoded = self._tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int, int]]]:
        """Per text, each token's `(start, end, word)`: character span and word number, without special tokens."""
        encoded = self._tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
        return [
            [
                (start, end, -1 if word is None else word)
                for (start, end), word in zip(offsets, encoded.word_ids(i), strict=True)
            ]
            for i, offsets in enumerate(encoded["offset_mapping"])
        ]

    def special_tokens(self, *, pair: bool) -> int:
        """Special tokens the model input adds around one text or a (query, document) pair."""
        return int(self._tokenizer.num_special_tokens_to_add(pair=pair))

    def clip(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` that holds at most `max_tokens` tokens (Cohere's `max_tokens_per_doc`)."""
        encoded = self._tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        return text if len(offsets) <= max_tokens else text[: offsets[max_tokens - 1][1]]

    def _encode(self, first: list[str], second: list[str] | None) -> list[Encoded]:
        encoded = self._tokenizer(
            first,
            second,
            truncation="longest_first",
            max_length=self.max_length,
            return_attention_mask=False,
            return_token_type_ids=self.uses_token_types,
        )
        ids_list = encoded["input_ids"]
        types_list = encoded["token_type_ids"] if self.uses_token_types else [None] * len(ids_list)
        full = self._full_lengths(first, second, ids_list)
        return [
            Encoded(ids, types, truncated=length > self.max_length)
            for ids, types, length in zip(ids_list, types_list, full, strict=True)
        ]

    def _full_lengths(self, first: list[str], second: list[str] | None, ids_list: list[list[int]]) -> list[int]:
        """Untruncated lengths, computed only for inputs that reached the window (the rest were not cut)."""
        lengths = [len(ids) for ids in ids_list]
        at_limit = [i for i, length in enumerate(lengths) if length >= self.max_length]
        if at_limit:
            again = self._tokenizer(
                [first[i] for i in at_limit],
                [second[i] for i in at_limit] if second is not None else None,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
            for i, ids in zip(at_limit, again, strict=True):
                lengths[i] = len(ids)
        return lengths

    def collate(self, items: Sequence[Encoded]) -> Batch:
        """Pad to the longest item; int64 as both torch and ONNX Runtime expect."""
        width = max(len(item) for item in items)
        input_ids = np.full((len(items), width), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(items), width), dtype=np.int64)
        token_type_ids = np.zeros((len(items), width), dtype=np.int64) if self.uses_token_types else None
        for row, item in enumerate(items):
            input_ids[row, : len(item)] = item.ids
            attention_mask[row, : len(item)] = 1
            if token_type_ids is not None and item.type_ids is not None:
                token_type_ids[row, : len(item)] = item.type_ids
        return Batch(input_ids, attention_mask, token_type_ids)
