"""Late interaction on the Debian descriptions: the trained ColBERT (bench/train_colbert.py) against the cross-encoder
of the same body (debian-minilm-ce), both on ONNX Runtime fp32 in one service, in the same run.

Speed: 1,000 documents (BM25's top 1,000 for a dev query), the ColBERT cold (its vector cache emptied) and warm
(every document's vectors cached, a new query), against the cross-encoder scoring them directly (score cache off).
Accuracy and latency: dev queries x BM25's top 100 (corpus BM25 sent as the client's first-stage scores), NDCG@10 and
p50 latency of BM25, hybrid BM25 K=30 -> cross-encoder, the cascade ColBERT K=30 -> cross-encoder cold (the vector
cache emptied first: the ColBERT encodes all 100 documents), then with those vectors cached: the ColBERT alone and
the cascade again (a service reranking candidates it has seen before); hybrid and the cached cascade again with z-score
fusion (the first stage's weight 0.5, fixed: mixing the first stage's score into the final one).
The fp16 vector cache's fidelity: every warm score against its cold fp32 score. One more cold row runs numpy's BLAS
(the ColBERT projection after the body) on every core instead of the one the service keeps it to (cores.py): what
that limit is worth.

    .venv/bin/python bench/late_interaction.py [--queries 50] [--colbert DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
from common import DEBIAN_DATA, TRAINED_CE, check, cpu_line, format_table, plot_path, save, spearman
from threadpoolctl import threadpool_limits

from rerankd.config import Settings
from rerankd.pipeline.service import LocalService
from rerankd.pipeline.types import RerankRequest

COLBERT = Path.home() / ".cache" / "rerankd" / "models" / "debian-colbert-minilm"
ROUNDS = 3


def read_jsonl(path: Path) -> dict[str, str]:
    rows = (json.loads(line) for line in path.open(encoding="utf-8"))
    return {row["_id"]: " ".join(filter(None, (row.get("title"), row["text"]))) for row in rows}


def bm25_top(queries: list[str], k: int) -> tuple[list[str], list[list[int]], list[list[float]], dict[str, str]]:
    """Corpus BM25's top `k` per query: corpus ids, hit positions, scores, and the corpus."""
    import bm25s
    import Stemmer

    corpus = read_jsonl(DEBIAN_DATA / "corpus.jsonl")
    ids = list(corpus)
    stemmer = Stemmer.Stemmer("english")
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize([corpus[i] for i in ids], stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    tokens = bm25s.tokenize(queries, stopwords="en", stemmer=stemmer, show_progress=False)
    hits, scores = retriever.retrieve(tokens, k=k, show_progress=False)
    return ids, [list(map(int, row)) for row in hits], [list(map(float, row)) for row in scores], corpus


def ndcg10(order: list[str], relevant: str) -> float:
    rank = order.index(relevant) if relevant in order[:10] else None
    return 0.0 if rank is None else 1.0 / math.log2(rank + 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--colbert", type=Path, default=COLBERT)
    parser.add_argument("--name", default="late_interaction", help="results file name")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="speed rounds (the best is reported)")
    args = parser.parse_args()
    colbert, ce = str(args.colbert), str(TRAINED_CE)
    settings = Settings(
        model=[ce, colbert], backend="onnx", precision="fp32", warmup_seconds=1, embedding_model="", score_cache_mb=0,
        request_timeout_seconds=900,
    )  # fmt: skip
    service = LocalService(settings)
    service.load()
    engine = service._registry.get(colbert)  # the vector cache, to empty it between cold rounds

    queries = read_jsonl(DEBIAN_DATA / "queries-dev.jsonl")
    qrel_lines = (DEBIAN_DATA / "qrels" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    qrels = dict(line.split("\t")[:2] for line in qrel_lines)
    sample = sorted(q for q in queries if q in qrels)
    random.Random(0).shuffle(sample)
    sample = sample[: args.queries + 1]
    texts = [queries[q] for q in sample]
    ids, hits, bm25, corpus = bm25_top(texts, 1000)

    def run(request: RerankRequest) -> tuple[list[int], float, object]:
        started = time.perf_counter()
        answer = asyncio.run(service.rerank(request))
        return [item.index for item in answer.results], 1000 * (time.perf_counter() - started), answer

    # -- speed: 1,000 documents ---------------------------------------------------------------------------------
    documents = [corpus[ids[i]] for i in hits[0]]
    blas_all_cores = "colbert cold, numpy BLAS on every core"
    speed: dict[str, list[float]] = {
        "cross-encoder direct": [], "colbert cold": [], "colbert warm": [], blas_all_cores: []
    }  # fmt: skip
    fidelity: list[float] = []
    for round_ in range(args.rounds):
        speed["cross-encoder direct"].append(run(RerankRequest(texts[0], documents, ce, strategy="direct"))[1])
        engine.late.cache._entries.clear()
        _, cold_ms, cold = run(RerankRequest(texts[0], documents, colbert, strategy="direct"))
        speed["colbert cold"].append(cold_ms)
        _, warm_ms, warm = run(RerankRequest(texts[0] + " ", documents, colbert, strategy="direct"))
        speed["colbert warm"].append(warm_ms)
        engine.late.cache._entries.clear()
        with threadpool_limits(len(os.sched_getaffinity(0)), user_api="blas"):
            speed[blas_all_cores].append(run(RerankRequest(texts[0], documents, colbert, strategy="direct"))[1])
        if round_ == 0:
            a = np.array([r.score for r in sorted(cold.results, key=lambda r: r.index)])
            b = np.array([r.score for r in sorted(warm.results, key=lambda r: r.index)])
            fidelity = [float(np.abs(a - b).max()), spearman(a, b), float(np.mean(np.abs(a - b)))]
    best = {name: min(times) for name, times in speed.items()}

    # -- accuracy and latency: BM25 top 100 ----------------------------------------------------------------------
    engine.late.cache._entries.clear()  # --queries 0: speed only (an untrained ColBERT's accuracy means nothing)
    cascade, hybrid, cached = "cascade colbert K=30 -> ce", "hybrid bm25 K=30 -> ce", "cascade, vectors cached"
    # Fusion (z-scores, the first stage's weight 0.5, not tuned here) mixes the first stage's score into the final one.
    fused, hybrid_fused = "cascade, vectors cached + zscore w=0.5", "hybrid bm25 K=30 -> ce + zscore w=0.5"
    variants = ["bm25", hybrid, hybrid_fused, cascade, "colbert alone, vectors cached", cached, fused]
    ndcg: dict[str, list[float]] = {name: [] for name in variants}
    latency: dict[str, list[float]] = {name: [] for name in variants[1:]}
    for q in range(1, len(texts) if args.queries else 1):
        top = hits[q][:100]
        docs = [corpus[ids[i]] for i in top]
        names = [ids[i] for i in top]
        relevant = qrels[sample[q]]
        ndcg["bm25"].append(ndcg10(names, relevant))
        first = bm25[q][:100]
        colbert_first = RerankRequest(texts[q], docs, ce, strategy="hybrid", candidates=30, first_stage_model=colbert)
        requests = {  # in this order: the cold cascade's first stage leaves the 100 documents' vectors cached
            hybrid: RerankRequest(texts[q], docs, ce, strategy="hybrid", candidates=30, first_stage_scores=first),
            cascade: colbert_first,
            "colbert alone, vectors cached": RerankRequest(texts[q], docs, colbert, strategy="direct"),
            cached: colbert_first,
            fused: dataclasses.replace(colbert_first, fusion="zscore", fusion_weight=0.5),
            hybrid_fused: RerankRequest(
                texts[q], docs, ce, strategy="hybrid", candidates=30, first_stage_scores=first, fusion="zscore",
                fusion_weight=0.5,
            ),
        }  # fmt: skip
        for name, request in requests.items():
            if name == cascade:
                engine.late.cache._entries.clear()  # cold: none of the documents' vectors cached
            order, ms, _ = run(request)
            ndcg[name].append(ndcg10([names[i] for i in order], relevant))
            latency[name].append(ms)
    service.close()

    rows = [
        {
            "variant": name,
            "ndcg@10": round(float(np.mean(v)), 4),
            "p50 ms": round(float(np.median(latency.get(name, [0]))), 1),
        }
        for name, v in ndcg.items()
        if v
    ]
    checks = [
        check("colbert cold / cross-encoder direct", best["colbert cold"] / best["cross-encoder direct"], "<=", 1.0),
        check("cross-encoder direct / colbert warm", best["cross-encoder direct"] / best["colbert warm"], ">=", 50.0),
        check("BLAS on every core / on one (cold)", best[blas_all_cores] / best["colbert cold"], ">=", 1.0),
    ]
    if args.queries:
        checks += [
            check("cascade - hybrid NDCG@10", float(np.mean(ndcg[cascade]) - np.mean(ndcg[hybrid])), ">=", 0.0),
            check("fused cascade - hybrid NDCG@10", float(np.mean(ndcg[fused]) - np.mean(ndcg[hybrid])), ">=", 0.0),
            check(
                "fused cascade - fused hybrid NDCG@10",
                float(np.mean(ndcg[fused]) - np.mean(ndcg[hybrid_fused])),
                ">=",
                0.0,
            ),
            check("cascade / hybrid p50", float(np.median(latency[cascade]) / np.median(latency[hybrid])), "<=", 1.0),
            check(
                "cascade, vectors cached / hybrid p50",
                float(np.median(latency[cached]) / np.median(latency[hybrid])),
                "<=",
                1.0,
            ),
        ]
    record = {
        "colbert": colbert,
        "cross_encoder": ce,
        "engine": "onnx fp32 (both)",
        "queries": len(texts) - 1,
        "speed_ms_1000_docs": speed,
        "best_ms_1000_docs": best,
        "fp16_cache_fidelity": {"max_abs": fidelity[0], "spearman": fidelity[1], "mean_abs": fidelity[2]},
        "accuracy": rows,
        "checks": checks,
        "command": " ".join(["bench/late_interaction.py", *sys.argv[1:]]),
    }
    path = save(args.name, record)
    print(cpu_line(json.loads(path.read_text(encoding="utf-8"))["machine"]))
    print(
        format_table(
            [
                {"engine": name, "best ms": round(ms, 1), "rounds": [round(t) for t in speed[name]]}
                for name, ms in best.items()
            ],
            ["engine", "best ms", "rounds"],
        )
    )
    print(f"fp16 cache vs fp32: max |diff| {fidelity[0]:.2e}, mean {fidelity[2]:.2e}, Spearman {fidelity[1]:.6f}")
    print(format_table(rows, ["variant", "ndcg@10", "p50 ms"]))
    print(format_table(checks, ["check", "measured", "limit", "ok"]))
    _plot(args.name, best, rows)
    print(f"saved {path}")


def _plot(name: str, best: dict[str, float], rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.bar(list(best), list(best.values()))
    left.set_yscale("log")
    left.set_ylabel("ms for 1,000 documents (best of rounds)")
    right.bar([row["variant"] for row in rows], [row["ndcg@10"] for row in rows])
    right.set_ylabel("NDCG@10 (BM25 top 100)")
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=20, labelsize=7)
    figure.tight_layout()
    figure.savefig(plot_path(name))


if __name__ == "__main__":
    main()
