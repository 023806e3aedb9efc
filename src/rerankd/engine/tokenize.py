"""Tokenization: texts to token ids once each, (query, document) pairs built from ids, padding into a `Batch`.

Thread-safe (a private copy of the tokenizer, never reconfigured), and only the part of a text that can reach the
model is tokenized (`encode_prefix`): docs/architecture.md (Design notes, Tokenization).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Encoding
from tokenizers import Tokenizer as RustTokenizer
from transformers import AutoTokenizer

from rerankd.backends import Batch
from rerankd.engine.prefix import by_growing_prefix
from rerankd.engine.prompt import Encode, PromptTemplate, TemplateError
from rerankd.errors import ModelNotFound
from rerankd.models import ModelSpec

# Without word boundaries (a tokenizer with no pre-tokenizer, a very long "word"), tokens ending this many
# characters before a prefix's end are taken as unaffected by the cut.
CUT_MARGIN_CHARS = 256

TokenSpan = tuple[int, int, int]  # (start character, end character, word number)


@dataclass(frozen=True, slots=True)
class Encoded:
    """One model input (int32 ids: half the memory of a queued request; batches are int64). `truncated` says
    whether the model's window cut it."""

    ids: np.ndarray
    type_ids: np.ndarray | None
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, slots=True)
class Tokens:
    """One text's tokens without special tokens: all of them, or the first ones when `complete` is False.
    `spans` (character spans and word numbers) only when asked for: chunking and clipping need them."""

    ids: np.ndarray
    complete: bool
    spans: list[TokenSpan] | None = None
    text: str | None = None  # the text itself, kept for queries (LLM rerankers render it into their prompt)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, slots=True)
class _Template:
    """Where the model input puts special tokens around one text or two: learned from the post-processor."""

    before: list[int]  # special ids before the first text
    between: list[int]  # between first and second (pairs only)
    after: list[int]  # after the last text
    type_ids: tuple[int, ...]  # per part: before, first, between, second, after

    @property
    def specials(self) -> int:
        return len(self.before) + len(self.between) + len(self.after)


def _learn_template(tokenizer: RustTokenizer, pair: bool) -> _Template:
    first = tokenizer.encode("alpha", add_special_tokens=False)
    second = tokenizer.encode("omega", add_special_tokens=False) if pair else None
    full = tokenizer.post_process(first, second, add_special_tokens=True)
    ids, types = full.ids, full.type_ids
    a, b = first.ids, second.ids if second else []
    start = next(i for i in range(len(ids)) if ids[i : i + len(a)] == a)
    middle = start + len(a)
    second_start = next(i for i in range(middle, len(ids) + 1) if ids[i : i + len(b)] == b) if pair else middle
    end = second_start + len(b)

    def type_of(position: int) -> int:
        return types[position] if position < len(types) else 0

    return _Template(
        before=ids[:start],
        between=ids[middle:second_start],
        after=ids[end:],
        type_ids=(type_of(0), type_of(start), type_of(middle), type_of(second_start), type_of(end)),
    )


def longest_first(first: int, second: int, budget: int) -> tuple[int, int]:
    """How many tokens of each text a pair keeps: Hugging Face tokenizers' `longest_first` truncation, which
    sentence-transformers uses (the shorter text is kept whole if it fits in half, else both get half)."""
    if first + second <= budget:
        return first, second
    short = min(first, second)
    kept_long = short if short > budget else max(short, budget - short)
    kept_short = short
    if kept_short + kept_long > budget:
        kept_short, kept_long = budget // 2, budget // 2 + budget % 2
    return (kept_long, kept_short) if first > second else (kept_short, kept_long)


class Tokenizer:
    """The model's own fast tokenizer with sentence-transformers' truncation; thread-safe.

    An LLM reranker's user text is read as text (`<|im_end|>` in a document is those characters, not the turn's end)
    unless `special_tokens_in_text`, which reads it as sentence-transformers does (engine/prompt.py)."""

    def __init__(self, spec: ModelSpec, *, special_tokens_in_text: bool = False) -> None:
        loaded = AutoTokenizer.from_pretrained(spec.path)
        backend = getattr(loaded, "backend_tokenizer", None)
        if not isinstance(backend, RustTokenizer):
            raise ValueError(f"{spec.name}: needs a fast (tokenizers) tokenizer; found {type(loaded).__name__}")
        self._tokenizer = RustTokenizer.from_str(backend.to_str())  # a private copy, configured once
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        as_text = spec.kind == "causal-lm" and not special_tokens_in_text
        self._text = _without_added_tokens(self._tokenizer) if as_text else self._tokenizer
        self.max_length = spec.max_length
        self.pad_id = int(loaded.pad_token_id or 0)
        self.uses_token_types = "token_type_ids" in loaded.model_input_names
        self._pair = _learn_template(self._tokenizer, pair=True)
        self._single = _learn_template(self._tokenizer, pair=False)
        self.prompt = _prompt_template(spec, loaded, self._tokenizer, self._text) if spec.kind == "causal-lm" else None

    # -- texts to tokens ------------------------------------------------------------------------------------------

    def tokens(self, texts: Sequence[str]) -> list[Tokens]:
        """Every token of each text (for queries, which the API bounds by characters)."""
        return [_tokens(encoding, complete=True) for encoding in self._encode_batch(texts)]

    def encode_prefix(self, texts: Sequence[str], max_tokens: int, *, spans: bool = False) -> list[Tokens]:
        """Each text's first `max_tokens` tokens (all of them if fewer), tokenizing only as much text as needed.

        A result is `complete` when it holds the whole text; otherwise the text has more than `max_tokens`."""

        def attempt(indices: list[int], prefixes: list[str]) -> list[Tokens | None]:
            answers: list[Tokens | None] = []
            for i, prefix, encoding in zip(indices, prefixes, self._encode_batch(prefixes), strict=True):
                whole = len(prefix) == len(texts[i])
                stable = len(encoding.ids) if whole else _stable_tokens(encoding, len(prefix))
                if whole and stable <= max_tokens:
                    answers.append(_tokens(encoding, complete=True, spans=spans))
                elif stable > max_tokens:  # enough tokens that no later text can change
                    answers.append(_tokens(encoding, complete=False, keep=max_tokens, spans=spans))
                else:
                    answers.append(None)
            return answers

        return by_growing_prefix(texts, max_tokens, attempt)

    def clip(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` that holds at most `max_tokens` tokens (Cohere's `max_tokens_per_doc`)."""
        tokens = self.encode_prefix([text], max_tokens, spans=True)[0]
        return text if tokens.complete or tokens.spans is None else text[: tokens.spans[-1][1]]

    def special_tokens(self, *, pair: bool) -> int:
        """Special tokens the model input adds around one text or a (query, document) pair (an LLM reranker's:
        its prompt template's)."""
        if pair and self.prompt is not None:
            return self.prompt.overhead
        return (self._pair if pair else self._single).specials

    def room(self, *, pair: bool) -> int:
        """Text tokens that fit in the model's window beside the special tokens (shared by a pair's two texts)."""
        return self.max_length - self.special_tokens(pair=pair)

    # -- tokens to model inputs -----------------------------------------------------------------------------------

    def encode_pairs(self, query: Tokens, documents: Sequence[str]) -> list[Encoded]:
        """Model inputs of (query, document) pairs; each document tokenized once, only as far as can matter."""
        budget = self.room(pair=True)
        # One token more than the query or the window could keep tells longest-first which text is longer.
        documents_tokens = self.encode_prefix(documents, max(budget, len(query)) + 1)
        return [self.pair(query, tokens) for tokens in documents_tokens]

    def encode_prompts(self, query: str, documents: Sequence[str], instruction: str | None) -> list[Encoded]:
        """An LLM reranker's inputs: each document placed in the model's prompt template with the query."""
        if self.prompt is None:
            raise ValueError("encode_prompts: this model has no prompt template")
        return [Encoded(ids, None, cut) for ids, cut in self.prompt.encode(query, documents, instruction)]

    def encode_texts(self, texts: Sequence[str]) -> list[Encoded]:
        return [self.single(tokens) for tokens in self.encode_prefix(texts, self.max_length)]

    def pair(self, query: Tokens, document: Tokens) -> Encoded:
        budget = self.room(pair=True)
        keep_query, keep_document = longest_first(len(query), len(document), budget)
        truncated = keep_query < len(query) or keep_document < len(document) or not document.complete
        return self._assemble(self._pair, query.ids[:keep_query], document.ids[:keep_document], truncated)

    def single(self, text: Tokens) -> Encoded:
        budget = self.room(pair=False)
        truncated = len(text) > budget or not text.complete
        return self._assemble(self._single, text.ids[:budget], None, truncated)

    def _assemble(self, template: _Template, first: np.ndarray, second: np.ndarray | None, truncated: bool) -> Encoded:
        parts = [template.before, first, template.between, *([] if second is None else [second]), template.after]
        ids = np.concatenate([np.asarray(part, dtype=np.int32) for part in parts])
        if not self.uses_token_types:
            return Encoded(ids, None, truncated)
        kinds = [0, 1, 2, 3, 4] if second is not None else [0, 1, 2, 4]
        type_ids = np.repeat(np.asarray(template.type_ids, dtype=np.int32)[kinds], [len(part) for part in parts])
        return Encoded(ids, type_ids, truncated)

    def collate(
        self, items: Sequence[Encoded], multiple: int = 1, attention: Sequence[np.ndarray] | None = None
    ) -> Batch:
        """Pad to the longest item, rounded up to a multiple of `multiple` tokens within the model's length (padding
        is masked: scores do not change); int64 as both torch and ONNX Runtime expect. `attention`: each item's own
        mask where it attends to less than all its tokens (late interaction's query expansion)."""
        longest = max(len(item) for item in items)
        width = max(longest, min(-(-longest // multiple) * multiple, self.max_length))
        input_ids = np.full((len(items), width), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(items), width), dtype=np.int64)
        token_type_ids = np.zeros((len(items), width), dtype=np.int64) if self.uses_token_types else None
        for row, item in enumerate(items):
            input_ids[row, : len(item)] = item.ids
            attention_mask[row, : len(item)] = 1 if attention is None else attention[row]
            if token_type_ids is not None and item.type_ids is not None:
                token_type_ids[row, : len(item)] = item.type_ids
        return Batch(input_ids, attention_mask, token_type_ids)

    def _encode_batch(self, texts: Sequence[str]) -> list[Encoding]:
        """User texts' tokens (an LLM reranker's, as text unless `special_tokens_in_text`)."""
        return _encoder(self._text)(texts)


def _encoder(tokenizer: RustTokenizer) -> Encode:
    """Texts to encodings without special tokens (a post-processor's); thread-safe."""

    def encode(texts: Sequence[str]) -> list[Encoding]:
        return tokenizer.encode_batch(list(texts), add_special_tokens=False) if texts else []

    return encode


def _without_added_tokens(tokenizer: RustTokenizer) -> RustTokenizer:
    """A copy that matches no added token: their strings (`<|im_start|>`, `<think>`) are tokenized as any text."""
    config = json.loads(tokenizer.to_str())
    config["added_tokens"] = []
    return RustTokenizer.from_str(json.dumps(config))


def _prompt_template(spec: ModelSpec, loaded: Any, tokenizer: RustTokenizer, text: RustTokenizer) -> PromptTemplate:
    """The model's chat template (or its preset's) with the render options its sentence-transformers config saves."""
    if spec.chat_template is not None:
        loaded.chat_template = spec.chat_template  # `loaded` is this tokenizer's own copy
    st_config = json.loads(path.read_text()) if (path := spec.path / "sentence_bert_config.json").is_file() else {}
    options = dict((st_config.get("processing_kwargs") or {}).get("chat_template") or {})
    for key in ("restore_suffix", "padding", "truncation", "max_length", "return_tensors", "tokenize"):
        options.pop(key, None)  # sentence-transformers' own flag and tokenizing options: not render options
    try:
        text_encode = None if text is tokenizer else _encoder(text)
        return PromptTemplate(loaded, _encoder(tokenizer), spec.max_length, options, text_encode=text_encode)
    except TemplateError as exc:
        raise ModelNotFound(f"model {spec.name!r}: served as an LLM reranker, but {exc}") from exc


def _tokens(encoding: Encoding, *, complete: bool, keep: int | None = None, spans: bool = False) -> Tokens:
    ids = np.asarray(encoding.ids[:keep], dtype=np.int32)
    if not spans:
        return Tokens(ids, complete)
    words = encoding.word_ids[: len(ids)]
    offsets = encoding.offsets[: len(ids)]
    return Tokens(ids, complete, [(a, b, -1 if w is None else w) for (a, b), w in zip(offsets, words, strict=True)])


def _stable_tokens(encoding: Encoding, prefix_chars: int) -> int:
    """Tokens of a prefix that the rest of the text cannot change: those of every word but the last (which the
    cut may have split), or, without word boundaries, those ending well before the cut."""
    words = encoding.word_ids
    if not words:
        return 0
    last = words[-1]
    if last is not None and last > 0:
        return next(i for i, word in enumerate(words) if word == last)
    return sum(1 for _, end in encoding.offsets if end <= prefix_chars - CUT_MARGIN_CHARS)
