"""Prompt templates of the public LLM rerankers, for model folders that do not carry one of their own.

A folder in sentence-transformers' CrossEncoder format (a `1_LogitScore` module and a chat template with `query`
and `document` roles) needs nothing from here. The published Qwen3-Reranker, mxbai-rerank-v2 and
bge-reranker-v2-gemma repositories have, at some revisions, only their model cards' Python prompt code; these
templates write that prompt as a chat template in sentence-transformers' convention (a `system` message carries the
instruction), with the answer tokens the model cards score. The presets name them; they apply only when the
folder's own template does not place a query and a document.
"""

from __future__ import annotations

from dataclasses import dataclass


def _role(role: str) -> str:
    return f'(messages | selectattr("role", "eq", "{role}") | map(attribute="content") | first)'


@dataclass(frozen=True)
class RerankTemplate:
    chat_template: str  # Jinja, rendered by the tokenizer's apply_chat_template
    true_token: str  # the score is logit(true) - logit(false), or logit(true) alone without a false token
    false_token: str | None


QWEN3_RERANKER = RerankTemplate(
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    "<Instruct>: {{ " + _role("system") + ' | default("Given a web search query, retrieve relevant passages that '
    'answer the query") }}\n<Query>: {{ ' + _role("query") + " }}\n<Document>: {{ " + _role("document") + " }}"
    "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    "yes",
    "no",
)

MXBAI_RERANK_V2 = RerankTemplate(
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{% set instruction = " + _role("system") + " %}"
    "{% if instruction %}instruction: {{ instruction }}\n{% endif %}query: {{ " + _role("query") + " }}\n"
    "document: {{ " + _role("document") + " }}\nYou are a search relevance expert who evaluates how well documents "
    "match search queries. For each query-document pair, carefully analyze the semantic relationship between them, "
    "then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:<|im_end|>\n"
    "<|im_start|>assistant\n",
    "1",
    "0",
)

BGE_RERANKER_GEMMA = RerankTemplate(
    "{{ bos_token }}A: {{ "
    + _role("query")
    + " }}\nB: {{ "
    + _role("document")
    + " }}\n{{ "
    + _role("system")
    + ' | default("Given a query A and a passage B, determine whether the passage contains an answer to the query '
    "by providing a prediction of either 'Yes' or 'No'.\") }}",
    "Yes",
    None,
)

TEMPLATES: dict[str, RerankTemplate] = {
    "qwen3-reranker": QWEN3_RERANKER,
    "mxbai-rerank-v2": MXBAI_RERANK_V2,
    "bge-reranker-v2-gemma": BGE_RERANKER_GEMMA,
}
