"""What server-side BM25 statistics and calibration cost a request: three real `rerankd serve` processes, the same
requests, interleaved (the order turns each round), on 100-document requests (a dev query's BM25 top 100 over the
Debian corpus, a new query each round, so every document is new to the learning server).

- baseline: `--corpus-stats-mb 0`: BM25 over the request's own documents, nothing learned (the server before);
- learned: the defaults (every request's documents counted into the sketch), warm from the first document, so
  fusion's BM25 reads the sketch;
- file + calibration: `--corpus-stats FILE --calibration FILE`.

Each for a plain request (`direct`) and a fused one (`fusion: zscore`, BM25 as the first stage). Prints a table,
saves JSON and a PNG, and checks the target: no request slower than the baseline by more than 5% (median ratio).

    .venv/bin/python bench/corpus_stats.py --corpus-stats STATS --calibration CAL [--rounds 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DEBIAN_DATA, TRAINED_CE, check, format_table, plot_path, save
from throughput import Served

from rerankd.datasets import load_beir
from rerankd.evaluation.harness import sample_queries
from rerankd.first_stage import Bm25
from rerankd.models import resolve_model

LIMIT = 1.05  # a request at most 5% slower than the baseline's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus-stats", required=True, help="a file from `rerankd corpus-stats` of the corpus")
    parser.add_argument("--calibration", required=True, help="a file from `rerankd calibrate` for the trained CE")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--name", default="corpus_stats")
    args = parser.parse_args()

    dataset = load_beir(DEBIAN_DATA, "dev")
    ids = list(dataset.corpus)
    texts = [dataset.corpus[i] for i in ids]
    queries = [dataset.queries[q] for q in sample_queries(dataset, args.rounds, seed=1)]
    positions, _ = Bm25(texts).top(queries, 100)
    spec = resolve_model(str(TRAINED_CE))
    configs = {
        "baseline": ["--corpus-stats-mb", "0"],
        "learned": ["--corpus-stats-warm-documents", "1"],
        "file + calibration": ["--corpus-stats", args.corpus_stats, "--calibration", args.calibration],
    }
    kinds = {"direct": {}, "fusion zscore": {"fusion": "zscore"}}
    times: dict[tuple[str, str], list[float]] = {(c, k): [] for c in configs for k in kinds}
    with tempfile.TemporaryDirectory() as logs:
        servers = {
            name: Served(spec, "onnx", "fp32", Path(logs) / f"{i}.log", extra)
            for i, (name, extra) in enumerate(configs.items())
        }
        try:
            for round_, query in enumerate(queries):
                documents = [texts[p] for p in positions[round_]]
                order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                for kind, fields in kinds.items():
                    for name in order:
                        body = {"query": query, "documents": documents, **fields}
                        started = time.perf_counter()
                        servers[name].client.post(servers[name].endpoint, json=body).raise_for_status()
                        times[(name, kind)].append(time.perf_counter() - started)
        finally:
            for server in servers.values():
                server.close()

    rows, checks = [], []
    for kind in kinds:
        base = np.array(times[("baseline", kind)])
        for name in configs:
            ratio = float(np.median(np.array(times[(name, kind)]) / base))
            rows.append(
                {
                    "request": kind,
                    "server": name,
                    "p50_ms": 1000 * float(np.median(times[(name, kind)])),
                    "ratio": ratio,
                }
            )
            if name != "baseline":
                checks.append(check(f"{kind}, {name} / baseline (median per round)", round(ratio, 4), "<=", LIMIT))
    print(format_table(rows, ("request", "server", "p50_ms", "ratio")))
    print(format_table(checks, ("check", "measured", "limit", "ok")))
    path = save(args.name, {"documents": 100, "rounds": args.rounds, "rows": rows, "checks": checks, "times": {
        f"{name} | {kind}": values for (name, kind), values in times.items()}})  # fmt: skip
    print(f"wrote {path}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for i, kind in enumerate(kinds):
        for j, name in enumerate(configs):
            axis.bar(i * 4 + j, 1000 * np.median(times[(name, kind)]), label=name if i == 0 else None, color=f"C{j}")
    axis.set_xticks([1, 5], list(kinds))
    axis.set_ylabel("median ms per 100-document request")
    axis.set_title("BM25 statistics and calibration: cost per request")
    axis.legend()
    figure.tight_layout()
    figure.savefig(plot_path(args.name), dpi=110)


if __name__ == "__main__":
    main()
