"""LLM rerankers' prompts: the model's chat template places the instruction, the query and the document, and the
ids are built as sentence-transformers builds them.

sentence-transformers (6.x) turns a pair into the messages `[system: instruction]?, query: q, document: d`, renders
them with the model's chat template, tokenizes the whole text without adding special tokens (the template writes
them), cuts it to the window from the right, and writes the template's tail back over the last tokens of a cut
input, so that the model still answers at the place it was trained to. This module does the same, with savings: the
template is rendered only at load time, and only as much of a document is tokenized as can reach the window.

User text is never rendered and never searched. At load time the template is rendered with private markers in place
of the parts (checked to be placed verbatim), which gives its literal pieces; a request's prompt is those pieces with
the parts put between them, so no text a client sends can be taken for a part's place.

Which strings in user text have meaning: none, by default. The template's own control tokens (`<|im_start|>`,
`<think>`: the tokenizer's added tokens, found in the template's pieces) are cut out, and the text between them is
encoded by `text_encode`, which matches no added token, so `<|im_end|>` written in a document stays those characters
instead of ending the turn. For text without such strings the ids are exactly sentence-transformers' (its tokenizer
cuts the text at the same tokens). Without `text_encode` the whole prompt is tokenized as one text, as
sentence-transformers does, so special-token strings in user text act as control tokens (exact parity for them too).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from tokenizers import Encoding

from rerankd.engine.prefix import by_growing_prefix
from rerankd.errors import PayloadTooLarge

PARTS = ("instruction", "query", "document")
# Markers for where the template puts each part: private-use characters, rendered only at load time (never beside
# user text), and checked to occur once each.
MARKS = {part: f"\ue000{part}\ue000" for part in PARTS}
_MARK = re.compile("|".join(re.escape(mark) for mark in MARKS.values()))
_PROBE = '  {} probe\n text & <kept> "verbatim".  '  # each part must be placed verbatim (no trim, no escaping)
_SUFFIX_CACHE = 256  # instructions whose template tail is remembered
# Fewest document tokens a prompt must leave room for: a query and instruction that leave less are refused (413),
# never scored on a prompt that lost its document.
MIN_DOCUMENT_TOKENS = 8

Encode = Callable[[Sequence[str]], list[Encoding]]


class TemplateError(ValueError):
    """The chat template cannot serve as a reranking prompt (it does not place the query and the document)."""


@dataclass(frozen=True)
class _Slot:
    """Where a part goes in a layout."""

    part: str


Item = str | int | _Slot  # literal text, a control token's id, or a part's place


@dataclass(frozen=True)
class Frame:
    """One request's prompt around its documents: `before` ids, the text `left + document + right` (tokenized as one:
    a document's first and last words join the template's text around it), then `after` ids."""

    before: list[int]
    left: str
    right: str
    after: list[int]


class PromptTemplate:
    """Places (instruction, query, document) in the model's chat template and builds the model input ids."""

    def __init__(
        self,
        tokenizer: Any,
        encode: Encode,
        max_length: int,
        template_kwargs: dict[str, Any],
        *,
        text_encode: Encode | None = None,
    ) -> None:
        """`tokenizer`: the Hugging Face tokenizer carrying the chat template (used only to render text);
        `encode`: tokenizes texts without special tokens (thread-safe); `text_encode`: the same, matching no added
        token, for the text around the template's control tokens (None: the prompt is tokenized whole, control
        strings in user text included, as sentence-transformers does)."""
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError("it has no chat template (chat_template.jinja or tokenizer_config.json)")
        self._tokenizer = tokenizer
        self._kwargs = template_kwargs
        self.max_length = max_length
        controls = None if text_encode is None else _controls(tokenizer, text_encode)
        self._encode = encode if text_encode is None else text_encode
        self._layouts = {given: _items(self._layout(given), encode, controls) for given in (False, True)}
        self.takes_instruction = any(item == _Slot("instruction") for item in self._layouts[True])
        self.overhead = len(self._ids("", "", None))  # template tokens around the texts
        self.suffix = lru_cache(maxsize=_SUFFIX_CACHE)(self._suffix)

    def render(self, query: str, document: str, instruction: str | None) -> str:
        """The template's text for these parts (load time only: requests are built from the layout)."""
        messages = [{"role": "query", "content": query}, {"role": "document", "content": document}]
        if instruction is not None:
            messages.insert(0, {"role": "system", "content": instruction})
        return self._tokenizer.apply_chat_template(messages, tokenize=False, **self._kwargs)

    def frame(self, query: str, instruction: str | None) -> Frame:
        """The prompt around this request's documents."""
        values = {"query": query, "instruction": instruction or ""}
        items = [
            values.get(item.part, item) if isinstance(item, _Slot) else item for item in self._layout_for(instruction)
        ]
        cut = items.index(_Slot("document"))
        before, after = _merge(items[:cut]), _merge(items[cut + 1 :])
        left = before.pop() if before and isinstance(before[-1], str) else ""
        right = after.pop(0) if after and isinstance(after[0], str) else ""
        return Frame(self._tokens(before), left, right, self._tokens(after))

    def check(self, query: str, instruction: str | None) -> Frame:
        """This request's frame, once it is known to leave a document at least MIN_DOCUMENT_TOKENS of the window
        (413 naming the fields otherwise)."""
        frame = self.frame(query, instruction)
        used = len(frame.before) + len(self._encode([frame.left + frame.right])[0].ids) + len(frame.after)
        room = self.max_length - used
        if room < MIN_DOCUMENT_TOKENS:
            fields = "query and instruction" if instruction else "query"
            raise PayloadTooLarge(
                f"{fields}: with the model's prompt template they take {used} of its {self.max_length}-token window, "
                f"leaving {max(room, 0)} for a document (at least {MIN_DOCUMENT_TOKENS} needed)"
            )
        return frame

    def encode(self, query: str, documents: Sequence[str], instruction: str | None) -> list[tuple[np.ndarray, bool]]:
        """Each document's model input ids (int32) and whether the window cut it."""
        frame = self.check(query, instruction)
        skipped = len(frame.before)

        def attempt(indices: list[int], parts: list[str]) -> list[tuple[np.ndarray, bool] | None]:
            encodings = self._encode([frame.left + part + frame.right for part in parts])
            answers: list[tuple[np.ndarray, bool] | None] = []
            for i, part, encoding in zip(indices, parts, encodings, strict=True):
                whole = len(part) == len(documents[i])
                decided = whole or skipped + _tokens_before(encoding, len(frame.left) + len(part)) >= self.max_length
                ids = frame.before + encoding.ids + frame.after
                answers.append(self._fit(ids, instruction, cut=not whole) if decided else None)
            return answers

        return by_growing_prefix(documents, self.max_length, attempt)

    def _tokens(self, items: list[Item]) -> list[int]:
        """The ids of texts and control tokens in a row (a frame's items hold no slot)."""
        encoded = iter(self._encode([item for item in items if isinstance(item, str)]))
        ids: list[int] = []
        for item in items:
            if isinstance(item, str):
                ids += next(encoded).ids
            elif isinstance(item, int):
                ids.append(item)
        return ids

    def _ids(self, query: str, document: str, instruction: str | None) -> list[int]:
        frame = self.frame(query, instruction)
        return frame.before + self._encode([frame.left + document + frame.right])[0].ids + frame.after

    def _layout_for(self, instruction: str | None) -> list[Item]:
        # An empty instruction is none, as in sentence-transformers (its `prompt=""` adds no system message).
        return self._layouts[bool(instruction)]

    def _layout(self, instruction: bool) -> list[str | _Slot]:
        """The template's literal text and the parts' places, from one render with markers; checked against a render
        with probe texts, so that each part is known to be placed verbatim."""
        rendered = self.render(MARKS["query"], MARKS["document"], MARKS["instruction"] if instruction else None)
        found = _MARK.findall(rendered)
        if found.count(MARKS["query"]) != 1 or found.count(MARKS["document"]) != 1:
            raise TemplateError(
                "its chat template does not place one 'query' and one 'document' message (sentence-transformers' "
                "reranking roles); use a model folder in sentence-transformers' CrossEncoder format"
            )
        if found.count(MARKS["instruction"]) > 1:
            raise TemplateError("its chat template places the instruction more than once")
        texts = _MARK.split(rendered)
        slots = [_Slot(next(part for part, mark in MARKS.items() if mark == found_mark)) for found_mark in found]
        layout: list[str | _Slot] = [texts[0]]
        for slot, text in zip(slots, texts[1:], strict=True):
            layout += [slot, text]
        probes = {part: _PROBE.format(part) for part in PARTS}
        expected = self.render(probes["query"], probes["document"], probes["instruction"] if instruction else None)
        if "".join(probes[item.part] if isinstance(item, _Slot) else item for item in layout) != expected:
            raise TemplateError("its chat template changes the query, document or instruction text (trims or escapes)")
        return layout

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
        """The template's tail: the common end of two prompts with different fillers for query and document (the
        instruction kept, as a template may place it after the document)."""
        first, second = (self._ids(filler, filler, instruction) for filler in ("0", "1 2 3 4"))
        count = 0
        for left, right in zip(reversed(first), reversed(second), strict=False):
            if left != right:
                break
            count += 1
        if not 0 < count < min(len(first), len(second)):
            return np.zeros(0, dtype=np.int32)
        return np.asarray(first[len(first) - count :], dtype=np.int32)


def _controls(tokenizer: Any, text_encode: Encode) -> frozenset[int]:
    """The tokenizer's added tokens (the template's control tokens), checked to be unreachable from text: the text
    encoder must read each one's string as ordinary tokens."""
    added = {int(i): token.content for i, token in tokenizer.added_tokens_decoder.items()}
    contents = list(added.values())
    for content, encoding in zip(contents, text_encode(contents), strict=True):
        if set(encoding.ids) & added.keys():
            raise TemplateError(
                f"its tokenizer reads {content!r} as a control token even as text; serve it with "
                "llm_special_tokens_in_text"
            )
    return frozenset(added)


def _items(layout: list[str | _Slot], encode: Encode, controls: frozenset[int] | None) -> list[Item]:
    """The layout with each literal text cut at the control tokens the tokenizer finds in it (None: not cut)."""
    if controls is None:
        return list(layout)
    texts = [item for item in layout if isinstance(item, str)]
    encodings = iter(encode(texts))
    items: list[Item] = []
    for item in layout:
        if isinstance(item, _Slot):
            items.append(item)
            continue
        encoding, start = next(encodings), 0
        for token, (begin, end) in zip(encoding.ids, encoding.offsets, strict=True):
            if token in controls:
                items += [item[start:begin], token]
                start = end
        items.append(item[start:])
    return items


def _merge(items: list[Item]) -> list[Item]:
    """Adjacent texts joined (they are tokenized together, as in the whole prompt); empty ones dropped."""
    merged: list[Item] = []
    for item in items:
        if isinstance(item, str) and merged and isinstance(merged[-1], str):
            merged[-1] += item
        elif item != "":
            merged.append(item)
    return merged


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
