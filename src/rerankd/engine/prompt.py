"""LLM rerankers' prompts: the model's chat template places the instruction, the query and the document, and the
ids are built exactly as sentence-transformers builds them.

sentence-transformers (6.x) turns a pair into the messages `[system: instruction]?, query: q, document: d`, renders
them with the model's chat template, tokenizes the whole text without adding special tokens (the template writes
them), cuts it to the window from the right, and writes the template's tail back over the last tokens of a cut
input, so that the model still answers at the place it was trained to. This module does the same, with two savings:
the template is rendered once per request (the document's place found with a marker, checked at load time to be
verbatim), and only as much of a document is tokenized as can reach the window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from tokenizers import Encoding

from rerankd.engine.prefix import by_growing_prefix

# Markers for where the template puts each part: private-use characters no real text or template contains.
QUERY_MARK = "\ue000query\ue000"
DOCUMENT_MARK = "\ue000document\ue000"
INSTRUCTION_MARK = "\ue000instruction\ue000"
_PROBE = "  Probe\n text, spaces kept.  "  # the template must place documents verbatim (no trim, no escaping)
_SUFFIX_CACHE = 256  # instructions whose template tail is remembered

Encode = Callable[[Sequence[str]], list[Encoding]]


class TemplateError(ValueError):
    """The chat template cannot serve as a reranking prompt (it does not place the query and the document)."""


class PromptTemplate:
    """Renders (instruction, query, document) with the model's chat template and builds the model input ids."""

    def __init__(self, tokenizer: Any, encode: Encode, max_length: int, template_kwargs: dict[str, Any]) -> None:
        """`tokenizer`: the Hugging Face tokenizer carrying the chat template (used only to render text);
        `encode`: tokenizes texts without special tokens (thread-safe)."""
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError("it has no chat template (chat_template.jinja or tokenizer_config.json)")
        self._tokenizer = tokenizer
        self._encode = encode
        self._kwargs = template_kwargs
        self.max_length = max_length
        rendered = self.render(QUERY_MARK, DOCUMENT_MARK, None)
        if rendered.count(QUERY_MARK) != 1 or rendered.count(DOCUMENT_MARK) != 1:
            raise TemplateError(
                "its chat template does not place one 'query' and one 'document' message (sentence-transformers' "
                "reranking roles); use a model folder in sentence-transformers' CrossEncoder format"
            )
        head, tail = self.split(QUERY_MARK, None)
        if self.render(QUERY_MARK, _PROBE, None) != head + _PROBE + tail:
            raise TemplateError("its chat template changes the document text (trims or escapes it)")
        self.takes_instruction = INSTRUCTION_MARK in self.render(QUERY_MARK, DOCUMENT_MARK, INSTRUCTION_MARK)
        self.overhead = len(self._encode([self.render("", "", None)])[0].ids)  # template tokens around the texts
        self.suffix = lru_cache(maxsize=_SUFFIX_CACHE)(self._suffix)

    def render(self, query: str, document: str, instruction: str | None) -> str:
        messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
        if instruction is not None:
            messages.insert(0, {"role": "system", "content": instruction})
        return self._tokenizer.apply_chat_template(messages, tokenize=False, **self._kwargs)

    def split(self, query: str, instruction: str | None) -> tuple[str, str]:
        """The text before and after the document, for this query and instruction."""
        head, tail = self.render(query, DOCUMENT_MARK, instruction).split(DOCUMENT_MARK)
        return head, tail

    def encode(self, query: str, documents: Sequence[str], instruction: str | None) -> list[tuple[np.ndarray, bool]]:
        """Each document's model input ids (int32) and whether the window cut it."""
        head, tail = self.split(query, instruction)

        def attempt(indices: list[int], parts: list[str]) -> list[tuple[np.ndarray, bool] | None]:
            encodings = self._encode([head + part + tail for part in parts])
            answers: list[tuple[np.ndarray, bool] | None] = []
            for i, part, encoding in zip(indices, parts, encodings, strict=True):
                whole = len(part) == len(documents[i])
                decided = whole or _tokens_before(encoding, len(head) + len(part)) >= self.max_length
                answers.append(self._fit(encoding.ids, instruction, cut=not whole) if decided else None)
            return answers

        return by_growing_prefix(documents, self.max_length, attempt)

    def _fit(self, ids: list[int], instruction: str | None, *, cut: bool) -> tuple[np.ndarray, bool]:
        """Right-truncate to the window and write the template's tail back (sentence-transformers' rule)."""
        if len(ids) <= self.max_length:
            return np.asarray(ids, dtype=np.int32), cut
        kept = np.asarray(ids[: self.max_length], dtype=np.int32)
        suffix = self.suffix(instruction)
        keep = min(len(suffix), len(kept))
        if keep:
            kept[len(kept) - keep :] = suffix[len(suffix) - keep :]
        return kept, True

    def _suffix(self, instruction: str | None) -> np.ndarray:
        """The template's tail: the common end of two renders with different fillers for query and document (the
        instruction kept, as a template may place it after the document)."""
        first, second = (self._encode([self.render(filler, filler, instruction)])[0].ids for filler in ("0", "1 2 3 4"))
        count = 0
        for left, right in zip(reversed(first), reversed(second), strict=False):
            if left != right:
                break
            count += 1
        if not 0 < count < min(len(first), len(second)):
            return np.zeros(0, dtype=np.int32)
        return np.asarray(first[len(first) - count :], dtype=np.int32)


def _tokens_before(encoding: Encoding, cut: int) -> int:
    """Tokens wholly before the word that holds character `cut - 1` (the document's cut): what comes after the cut
    cannot change them."""
    words, offsets = encoding.word_ids, encoding.offsets
    for index, (_, end) in enumerate(offsets):
        if end >= cut:
            word = words[index]
            if word is None:
                return index
            return next(i for i in range(index + 1) if words[i] == word)
    return len(offsets)
