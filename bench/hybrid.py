"""Hybrid, bi-encoder and `auto` strategies against direct scoring, on 1,000-document requests, through a real server.

Requests are real candidate sets: each is a Debian query with BM25's top 1,000 descriptions from the whole corpus.
One `rerankd serve` process (the trained debian-minilm-ce) answers everything, and the strategies take turns on
the same requests, so the ratios are same-run ratios:

- direct: the cross-encoder scores all 1,000 documents.
- hybrid K=100: BM25 over the request's documents keeps 100, the cross-encoder scores those.
- bi-encoder K=100, warm cache: all-MiniLM-L6-v2 similarity keeps 100 (document embeddings already cached, as
  when a RAG system sends the same documents again), the cross-encoder scores those.
- auto with latency_budget_ms=1000: a bounded loop of requests; how many finished within the budget.
- with `--first-stage-model DIR` (a ColBERT, bench/train_colbert.py): that model keeps 100 for the cross-encoder
  (`first_stage_model`), cold (the documents' vectors not cached yet) and warm (the same request again).

Two rates per strategy, because a pre-filter answers with every document but scores only some of them:
`returned_docs_per_s` is documents in the answer per second of p50 latency (1,000 / p50), `scored_docs_per_s` is
documents the cross-encoder scored per second (the median request's scored count / p50; counted from the answer:
every result not marked `cut_by_prefilter`). `speedup` is p50 latency against direct's.

Targets: hybrid >= 8x faster than direct, bi-encoder (warm) >= 5x, auto within budget for >= 95% of requests. The
last counts every request asked for (`--auto-requests`): one not sent before `--auto-limit-s` ran out counts as
not within the budget.

    python bench/hybrid.py                      # 3 direct rounds, 60 auto requests
    python bench/hybrid.py --rounds 2 --auto-requests 30 --name hybrid-quick   # quicker, saved apart
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import DEBIAN_DATA, TRAINED_CE, format_table, percentile, plot_path, save

from rerankd.datasets import load_beir
from rerankd.first_stage import Bm25
from testing.processes import stop

DOCUMENTS = 1000
CANDIDATES = 100
BUDGET_MS = 1000.0


def candidate_sets(count: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    """`count` (query, BM25 top-1,000 descriptions) pairs from the Debian data set."""
    data = load_beir(DEBIAN_DATA)
    texts = list(data.corpus.values())
    rng = np.random.default_rng(seed)
    query_ids = rng.choice(sorted(data.queries), size=count, replace=False)
    queries = [data.queries[q] for q in query_ids]
    positions, _ = Bm25(texts).top(queries, DOCUMENTS)
    return [(query, [texts[p] for p in row]) for query, row in zip(queries, positions, strict=True)]


class Server:
    """`rerankd serve` in a subprocess on a free loopback port."""

    def __init__(self, models: list[Path], log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "rerankd.cli", "serve", "--port", str(port)]
        command += [argument for model in models for argument in ("--model", str(model))]
        command += ["--warmup-seconds", "3", "--log-level", "warning", "--score-cache-mb", "0"]
        # Latency is what is measured: on a busy machine direct scoring of 1,000 documents can pass the default 60 s.
        command += ["--request-timeout-seconds", "600"]
        with log.open("w") as out:
            env = {**os.environ, "HF_HUB_OFFLINE": "1"}
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError("the server did not become ready")

    def __exit__(self, *exc: object) -> None:
        stop(self.process)


def timed(client: httpx.Client, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One request: its latency, the documents returned and scored, and the answer's `meta.rerankd`."""
    started = time.perf_counter()
    response = client.post(f"{url}/v2/rerank", json=body)
    elapsed = 1000 * (time.perf_counter() - started)
    response.raise_for_status()
    answer = response.json()
    results = answer["results"]
    scored = sum(not item.get("cut_by_prefilter") for item in results)
    return {"ms": elapsed, "returned": len(results), "scored": scored, **answer["meta"]["rerankd"]}


def compare(
    client: httpx.Client, url: str, sets: list[tuple[str, list[str]]], first_model: str | None
) -> dict[str, list[dict[str, Any]]]:
    """Direct, hybrid, warm bi-encoder and the first-stage model's cascade on the same requests, taking turns."""
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "hybrid K=100": [], "bi-encoder K=100 (warm)": []}
    cold, warm = f"cascade {first_model} K=100 (cold)", f"cascade {first_model} K=100 (warm)"
    for query, documents in sets:
        base = {"query": query, "documents": documents}
        runs["direct"].append(timed(client, url, {**base, "strategy": "direct"}))
        runs["hybrid K=100"].append(timed(client, url, {**base, "strategy": "hybrid", "candidates": CANDIDATES}))
        bi = {**base, "strategy": "bi-encoder", "candidates": CANDIDATES}
        timed(client, url, bi)  # fills the embedding cache with these documents
        runs["bi-encoder K=100 (warm)"].append(timed(client, url, bi))
        if first_model is not None:
            cascade = {**base, "strategy": "hybrid", "candidates": CANDIDATES, "first_stage_model": first_model}
            runs.setdefault(cold, []).append(timed(client, url, cascade))
            runs.setdefault(warm, []).append(timed(client, url, cascade))
        print("  round: " + ", ".join(f"{k} {v[-1]['ms']:.0f} ms" for k, v in runs.items()), file=sys.stderr)
    return runs


def auto_loop(
    client: httpx.Client, url: str, sets: list[tuple[str, list[str]]], requests: int, limit_s: float
) -> list[dict[str, Any]]:
    """`auto` with the budget, one request at a time, bounded in count and time."""
    outcomes = []
    deadline = time.monotonic() + limit_s
    for i in range(requests):
        if time.monotonic() > deadline:
            break
        query, documents = sets[i % len(sets)]
        body = {"query": query, "documents": documents, "strategy": "auto", "latency_budget_ms": BUDGET_MS}
        outcomes.append(timed(client, url, body))
    return outcomes


def summarise(name: str, runs: list[dict[str, Any]], direct_p50: float) -> dict[str, Any]:
    """p50/p99 latency and both rates (module docstring) of one strategy's requests."""
    p50 = percentile([run["ms"] for run in runs], 50)
    return {
        "strategy": name,
        "p50_ms": p50,
        "p99_ms": percentile([run["ms"] for run in runs], 99),
        "returned_docs_per_s": 1000 * percentile([run["returned"] for run in runs], 50) / p50,
        "scored_docs_per_s": 1000 * percentile([run["scored"] for run in runs], 50) / p50,
        "median_scored": percentile([run["scored"] for run in runs], 50),
        "speedup": direct_p50 / p50,
        "requests": len(runs),
    }


def plot(rows: list[dict[str, Any]], auto: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.bar([r["strategy"] for r in rows], [r["p50_ms"] for r in rows], color=["#888", "#3a7", "#37a", "#a73"])
    left.set_yscale("log")
    left.set_ylabel("p50 latency (ms, log scale)")
    left.set_title(f"{DOCUMENTS} documents per request")
    left.tick_params(axis="x", labelsize=8, labelrotation=12)
    right.hist([o["ms"] for o in auto], bins=20, color="#a73")
    right.axvline(BUDGET_MS, color="k", linestyle="--", label=f"budget {BUDGET_MS:.0f} ms")
    right.set_xlabel("latency (ms)")
    right.set_ylabel("requests")
    right.set_title(f"auto, latency_budget_ms={BUDGET_MS:.0f}")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="requests per strategy in the comparison")
    parser.add_argument("--auto-requests", type=int, default=60, help="requests in the auto loop")
    parser.add_argument("--auto-limit-s", type=float, default=300, help="the auto loop stops after this long")
    parser.add_argument("--model", default=str(TRAINED_CE))
    parser.add_argument("--first-stage-model", type=Path, default=None, help="a ColBERT folder: its cascade rows")
    parser.add_argument("--name", default="hybrid", help="results name: bench/results/NAME.json and .png")
    args = parser.parse_args()

    load_before = os.getloadavg()  # the machine may be shared: recorded beside the numbers
    sets = candidate_sets(max(args.rounds, 20))
    log = Path(tempfile.mkdtemp(prefix="rerankd-bench-")) / "server.log"
    models = [Path(args.model)] + ([args.first_stage_model] if args.first_stage_model else [])
    first_model = args.first_stage_model.name if args.first_stage_model else None  # a folder's served name
    with Server(models, log) as server, httpx.Client(timeout=600) as client:
        timed(client, server.url, {"query": sets[0][0], "documents": sets[0][1][:200]})  # first-request costs
        runs = compare(client, server.url, sets[: args.rounds], first_model)
        auto = auto_loop(client, server.url, sets, args.auto_requests, args.auto_limit_s)

    direct = percentile([run["ms"] for run in runs["direct"]], 50)
    rows = [summarise(name, values, direct) for name, values in runs.items()]
    # Over every request asked for: those the time limit kept from being sent did not answer within the budget.
    within = sum(o["ms"] <= BUDGET_MS for o in auto) / max(args.auto_requests, 1)
    rows.append({**summarise(f"auto, budget {BUDGET_MS:.0f} ms", auto, direct), "within_budget": within})
    if len(auto) < args.auto_requests:
        print(f"auto: {len(auto)} of {args.auto_requests} requests sent before --auto-limit-s", file=sys.stderr)
    columns = ["strategy", "p50_ms", "p99_ms", "returned_docs_per_s", "scored_docs_per_s", "median_scored"]
    print(format_table(rows, [*columns, "speedup", "requests", "within_budget"]))
    targets = {
        "hybrid >= 8x direct": rows[1]["speedup"] >= 8,
        "bi-encoder (warm) >= 5x direct": rows[2]["speedup"] >= 5,
        "auto within budget >= 95%": within >= 0.95,
    }
    for name, met in targets.items():
        print(f"{'met ' if met else 'MISSED'}  {name}")
    record = {
        "args": vars(args),
        "documents": DOCUMENTS,
        "rows": rows,
        "requests": runs,
        "auto": auto,
        "targets": targets,
    }
    path = save(args.name, {**record, "load_average": {"before": load_before, "after": os.getloadavg()}})
    plot(rows, auto, plot_path(args.name))
    print(f"wrote {path} and {plot_path(args.name)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
