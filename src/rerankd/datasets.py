"""BEIR-format data sets: `corpus.jsonl`, `queries*.jsonl` and `qrels/*.tsv` in one folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BeirDataset:
    corpus: dict[str, str]  # doc id -> text (title and text joined)
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: relevance}


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def beir_document_text(doc: dict) -> str:
    """A BEIR corpus entry as one text: its title and text joined."""
    title, text = doc.get("title") or "", doc.get("text") or ""
    return f"{title}\n{text}" if title else text


def load_beir(folder: str | Path, split: str = "dev") -> BeirDataset:
    """Load a BEIR folder. `split` picks `queries-{split}.jsonl` (else `queries.jsonl`) and `qrels/{split}.tsv`."""
    folder = Path(folder)
    if not (folder / "corpus.jsonl").is_file():
        raise FileNotFoundError(f"{folder}: no corpus.jsonl, so not a BEIR-format folder")
    corpus = {str(doc["_id"]): beir_document_text(doc) for doc in _read_jsonl(folder / "corpus.jsonl")}
    queries_file = folder / f"queries-{split}.jsonl"
    if not queries_file.is_file():
        queries_file = folder / "queries.jsonl"
    queries = {str(q["_id"]): q["text"] for q in _read_jsonl(queries_file)}
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[2].strip().lstrip("-").isdigit():
            continue  # the header line
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    queries = {qid: text for qid, text in queries.items() if qid in qrels}
    return BeirDataset(corpus, queries, qrels)
