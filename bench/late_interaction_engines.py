"""The trained ColBERT on every CPU engine: fidelity to ONNX Runtime fp32 and speed, to decide what `auto` runs.

Fidelity, as for the other kinds (backends/fidelity.py's bar): dev queries x BM25's top 100 (100 by default), each
engine's MaxSim scores against ONNX Runtime fp32's: top-10 overlap, NDCG@10 delta, Spearman. Speed: BM25's top 300
for another dev query, encoded cold (no vector cache) on each engine in turn, rounds interleaved, docs/s and the
ratio to ONNX Runtime fp32 in the same run. bf16 rows only where the CPU has bf16 arithmetic.

    .venv/bin/python bench/late_interaction_engines.py [--queries 100] [--rounds 4] [--colbert DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
from common import DEBIAN_DATA, check, cpu_line, format_table, plot_path, save, spearman, top_k_overlap
from late_interaction import COLBERT, bm25_top, ndcg10, read_jsonl

from rerankd.config import Settings
from rerankd.cpu import this_cpu
from rerankd.pipeline.service import LocalService
from rerankd.pipeline.types import RerankRequest

REFERENCE = ("onnx", "fp32")
ENGINES = [REFERENCE, ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"), ("onnx", "int8")]
SPEED_DOCS = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4, help="speed rounds (the median is reported)")
    parser.add_argument("--colbert", type=Path, default=COLBERT)
    parser.add_argument("--name", default="late_interaction_engines", help="results file name")
    args = parser.parse_args()
    colbert = str(args.colbert)
    engines = [e for e in ENGINES if e[1] != "bf16" or this_cpu().bf16]
    services = {}
    for backend, precision in engines:
        settings = Settings(
            model=[colbert], backend=backend, precision=precision, warmup_seconds=1, embedding_model="",
            score_cache_mb=0, vector_cache_mb=0, request_timeout_seconds=900,
        )  # fmt: skip
        services[(backend, precision)] = LocalService(settings)
        services[(backend, precision)].load()

    queries = read_jsonl(DEBIAN_DATA / "queries-dev.jsonl")
    qrel_lines = (DEBIAN_DATA / "qrels" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    qrels = dict(line.split("\t")[:2] for line in qrel_lines)
    sample = sorted(q for q in queries if q in qrels)
    random.Random(1).shuffle(sample)
    sample = sample[: args.queries + 1]
    texts = [queries[q] for q in sample]
    ids, hits, _, corpus = bm25_top(texts, SPEED_DOCS)

    def scores(engine: tuple[str, str], query: str, documents: list[str]) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        answer = asyncio.run(services[engine].rerank(RerankRequest(query, documents, colbert, strategy="direct")))
        out = np.empty(len(documents))
        for item in answer.results:
            out[item.index] = item.score
        return out, time.perf_counter() - started

    # -- speed: one query's 300 documents, cold, engines taking turns --------------------------------------------
    speed_docs = [corpus[ids[i]] for i in hits[0]]
    seconds: dict[tuple[str, str], list[float]] = {engine: [] for engine in engines}
    for _ in range(args.rounds):
        for engine in engines:
            seconds[engine].append(scores(engine, texts[0], speed_docs)[1])

    # -- fidelity: the other queries' BM25 top 100 ---------------------------------------------------------------
    overlap: dict[tuple[str, str], list[float]] = {engine: [] for engine in engines}
    rank: dict[tuple[str, str], list[float]] = {engine: [] for engine in engines}
    ndcg: dict[tuple[str, str], list[float]] = {engine: [] for engine in engines}
    for q in range(1, len(texts)):
        top = hits[q][:100]
        documents = [corpus[ids[i]] for i in top]
        names = [ids[i] for i in top]
        reference = scores(REFERENCE, texts[q], documents)[0]
        for engine in engines:
            got = reference if engine == REFERENCE else scores(engine, texts[q], documents)[0]
            overlap[engine].append(top_k_overlap(reference, got))
            rank[engine].append(spearman(reference, got))
            ndcg[engine].append(ndcg10([names[i] for i in np.argsort(-got, kind="stable")], qrels[sample[q]]))
    for service in services.values():
        service.close()

    base = float(np.median(seconds[REFERENCE]))
    rows = []
    for engine in engines:
        median = float(np.median(seconds[engine]))
        delta = float(np.mean(ndcg[engine]) - np.mean(ndcg[REFERENCE]))
        top10 = float(np.mean(overlap[engine]))
        rows.append({
            "engine": "/".join(engine),
            "docs/s": round(SPEED_DOCS / median, 1),
            "vs onnx fp32": round(base / median, 2),
            "top-10 overlap": round(top10, 3),
            "ndcg@10 delta": round(delta, 4),
            "spearman": round(float(np.mean(rank[engine])), 4),
            "faithful": top10 >= 0.95 and round(abs(delta), 9) <= 0.005,
        })  # fmt: skip
    checks = [check(f"{row['engine']} top-10 overlap", row["top-10 overlap"], ">=", 0.95) for row in rows[1:]] + [
        check(f"{row['engine']} |NDCG@10 delta|", abs(row["ndcg@10 delta"]), "<=", 0.005) for row in rows[1:]
    ]
    record = {
        "colbert": colbert,
        "queries": len(texts) - 1,
        "speed_documents": SPEED_DOCS,
        "speed_seconds": {"/".join(engine): values for engine, values in seconds.items()},
        "rows": rows,
        "checks": checks,
        "command": " ".join(["bench/late_interaction_engines.py", *sys.argv[1:]]),
    }
    path = save(args.name, record)
    print(cpu_line(json.loads(path.read_text(encoding="utf-8"))["machine"]))
    print(format_table(rows, list(rows[0])))
    print(format_table(checks, ["check", "measured", "limit", "ok"]))
    _plot(args.name, rows)
    print(f"saved {path}")


def _plot(name: str, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    labels = [row["engine"] for row in rows]
    left.bar(labels, [row["vs onnx fp32"] for row in rows])
    left.set_ylabel(f"speed vs ONNX Runtime fp32 ({SPEED_DOCS} documents, cold)")
    right.bar(labels, [row["top-10 overlap"] for row in rows])
    right.axhline(0.95, color="k", linestyle="--", label="bar 0.95")
    right.set_ylabel("top-10 overlap with fp32")
    right.legend()
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=20, labelsize=8)
    figure.tight_layout()
    figure.savefig(plot_path(name))


if __name__ == "__main__":
    main()
