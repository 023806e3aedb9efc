"""How faithful the fast engines are: onnx fp32 vs torch, and int8 vs fp32, on real models and real queries.

Debian dev queries (a seeded sample, 100 by default), each with BM25's top 100 from the whole corpus; the trained
cross-encoder (../shared/models/debian-minilm-ce) and the packaged all-MiniLM-L6-v2 bi-encoder score every pair
in each precision. Reported per model: max |score diff| of onnx fp32 vs torch (raw logits or cosines), mean
Spearman and top-10 overlap of int8 vs fp32 per query, and NDCG@10 of each (ranx) with BM25's for context.
Targets (issue 3): |diff| <= 1e-4; Spearman >= 0.98; top-10 overlap >= 0.9; NDCG@10 within 0.005.

    .venv/bin/python bench/fidelity.py [--quick] [--queries N] [--torch-queries N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import numpy as np
from common import DEBIAN_DATA, TRAINED_CE, format_table, plot_path, save, spearman, top_k_overlap

from rerankd.config import Settings
from rerankd.datasets import load_beir
from rerankd.engine.engine import Engine
from rerankd.evaluation.harness import measure, sample_queries
from rerankd.first_stage import Bm25
from rerankd.models import ModelSpec, resolve_model

TARGETS = {"max_abs_diff": 1e-4, "spearman": 0.98, "top10_overlap": 0.9, "ndcg_drop": 0.005}
Candidates = list[tuple[str, str, list[str]]]  # (query id, query, candidate doc ids)


def candidates(queries: int, depth: int) -> tuple[Candidates, dict[str, str], dict[str, dict[str, int]]]:
    data = load_beir(DEBIAN_DATA)
    chosen = sample_queries(data, queries, seed=0)
    doc_ids = list(data.corpus)
    started = time.perf_counter()
    top, _ = Bm25([data.corpus[doc] for doc in doc_ids]).top([data.queries[qid] for qid in chosen], k=depth)
    print(f"BM25 top {depth} for {len(chosen)} queries in {time.perf_counter() - started:.0f} s", flush=True)
    rows = [(qid, data.queries[qid], [doc_ids[i] for i in row]) for qid, row in zip(chosen, top, strict=True)]
    return rows, data.corpus, data.qrels


def score_all(spec: ModelSpec, backend: str, precision: str, rows: Candidates, corpus: dict[str, str]) -> list:
    """Raw scores per query (one request per query, as a service sees them), and the docs/sec it took."""
    engine = Engine.load(
        spec, Settings(backend=backend, precision=precision, device="cpu", warmup_seconds=0, score_cache_mb=0)
    )

    async def run() -> list[np.ndarray]:
        out = []
        for _, query, docs in rows:
            out.append(await engine.score(await engine.prepare(query, [corpus[d] for d in docs]), raw=True))
        return out

    started = time.perf_counter()
    try:
        scores = asyncio.run(run())
    finally:
        engine.close()
    elapsed = time.perf_counter() - started
    pairs = sum(len(docs) for _, _, docs in rows)
    print(f"  {spec.short_name} {backend} {precision}: {pairs} pairs in {elapsed:.0f} s", flush=True)
    return scores


def ranking(rows: Candidates, scores: list[np.ndarray]) -> dict[str, list[str]]:
    return {
        qid: [docs[i] for i in np.argsort(-s, kind="stable")] for (qid, _, docs), s in zip(rows, scores, strict=True)
    }


def compare(name: str, spec: ModelSpec, rows: Candidates, corpus: dict, qrels: dict, torch_queries: int) -> dict:
    print(f"{name}:", flush=True)
    exact = score_all(spec, "onnx", "fp32", rows, corpus)
    fast = score_all(spec, "onnx", "int8", rows, corpus)
    reference = score_all(spec, "torch", "fp32", rows[:torch_queries], corpus)
    correlations = [spearman(a, b) for a, b in zip(exact, fast, strict=True)]
    overlap = [top_k_overlap(a, b) for a, b in zip(exact, fast, strict=True)]
    ndcg_fp32 = measure(qrels, ranking(rows, exact))["ndcg@10"]
    ndcg_int8 = measure(qrels, ranking(rows, fast))["ndcg@10"]
    return {
        "model": name,
        "queries": len(rows),
        "max_abs_diff": max(float(np.abs(a - b).max()) for a, b in zip(reference, exact, strict=False)),
        "torch_queries": len(reference),
        "spearman": float(np.mean(correlations)),
        "spearman_min": float(np.min(correlations)),
        "top10_overlap": float(np.mean(overlap)),
        "ndcg_fp32": ndcg_fp32,
        "ndcg_int8": ndcg_int8,
        "ndcg_drop": ndcg_fp32 - ndcg_int8,
        "per_query_spearman": correlations,
    }


def verdicts(row: dict[str, Any]) -> dict[str, bool]:
    return {
        "max_abs_diff": row["max_abs_diff"] <= TARGETS["max_abs_diff"],
        "spearman": row["spearman"] >= TARGETS["spearman"],
        "top10_overlap": row["top10_overlap"] >= TARGETS["top10_overlap"],
        "ndcg_drop": row["ndcg_drop"] <= TARGETS["ndcg_drop"],
    }


def plot(rows: list[dict[str, Any]], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.boxplot([row["per_query_spearman"] for row in rows], tick_labels=[row["model"] for row in rows])
    left.axhline(TARGETS["spearman"], color="red", linestyle="--", label=f"target mean {TARGETS['spearman']}")
    left.set_ylabel("Spearman, int8 vs fp32, per query")
    left.legend()
    positions = np.arange(len(rows))
    right.bar(positions - 0.2, [row["ndcg_fp32"] for row in rows], 0.4, label="fp32")
    right.bar(positions + 0.2, [row["ndcg_int8"] for row in rows], 0.4, label="int8")
    right.set_xticks(positions, [row["model"] for row in rows])
    right.set_ylabel("NDCG@10 (BM25 top-100 reranked)")
    right.legend()
    figure.suptitle("int8 fidelity on Debian dev queries")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 queries x 30 candidates (a smoke run)")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--depth", type=int, default=100, help="BM25 candidates per query")
    parser.add_argument("--torch-queries", type=int, default=20, help="queries also scored by torch (slow)")
    args = parser.parse_args()
    queries, depth = (20, 30) if args.quick else (args.queries, args.depth)
    if not DEBIAN_DATA.is_dir():
        raise SystemExit(f"{DEBIAN_DATA} is missing: the fidelity report needs the Debian data set")
    rows, corpus, qrels = candidates(queries, depth)
    bm25 = measure(qrels, {qid: docs for qid, _, docs in rows})["ndcg@10"]
    models = {"debian-minilm-ce": resolve_model(str(TRAINED_CE))} if TRAINED_CE.is_dir() else {}
    models["all-MiniLM-L6-v2 (bi)"] = resolve_model("default")
    results = [compare(name, spec, rows, corpus, qrels, args.torch_queries) for name, spec in models.items()]
    for row in results:
        row["met"] = verdicts(row)
    columns = ["model", "queries", "max_abs_diff", "spearman", "spearman_min", "top10_overlap"]
    columns += ["ndcg_fp32", "ndcg_int8", "ndcg_drop"]
    print(f"\nBM25 NDCG@10 on these queries: {bm25:.4f}; targets: {TARGETS}\n" + format_table(results, columns))
    for row in results:
        print(f"{row['model']}: " + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in row["met"].items()))
    name = "fidelity-quick" if args.quick else "fidelity"
    path = save(name, {"depth": depth, "bm25_ndcg@10": bm25, "targets": TARGETS, "rows": results})
    plot(results, plot_path(name))
    print(f"saved {path} and {plot_path(name)}")


if __name__ == "__main__":
    main()
