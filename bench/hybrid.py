"""Hybrid, bi-encoder and `auto` strategies against direct scoring, on 1,000-document requests, through a real server.

Requests are real candidate sets: each is a Debian query with BM25's top 1,000 descriptions from the whole corpus.
One `rerankd serve` process (the trained debian-minilm-ce) answers everything, and the strategies take turns on
the same requests, so the ratios are same-run ratios:

- direct: the cross-encoder scores all 1,000 documents.
- hybrid K=100: BM25 over the request's documents keeps 100, the cross-encoder scores those.
- bi-encoder K=100, warm cache: all-MiniLM-L6-v2 similarity keeps 100 (document embeddings already cached, as
  when a RAG system sends the same documents again), the cross-encoder scores those.
- auto with latency_budget_ms=1000: a bounded loop of requests; how many finished within the budget.

Targets: hybrid >= 8x faster than direct, bi-encoder (warm) >= 5x, auto within budget for >= 95% of requests.

    python bench/hybrid.py                      # 3 direct rounds, 60 auto requests
    python bench/hybrid.py --rounds 2 --auto-requests 30   # quicker
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
from rerankd.prefilter import Bm25

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

    def __init__(self, model: Path, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "rerankd.cli", "serve", "--model", str(model), "--port", str(port)]
        command += ["--warmup-seconds", "3", "--log-level", "warning", "--score-cache-mb", "0"]
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
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def timed(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    response = client.post(f"{url}/v2/rerank", json=body)
    elapsed = 1000 * (time.perf_counter() - started)
    response.raise_for_status()
    return elapsed, response.json()["meta"]["rerankd"]


def compare(client: httpx.Client, url: str, sets: list[tuple[str, list[str]]]) -> dict[str, list[float]]:
    """Direct, hybrid and warm bi-encoder on the same requests, taking turns."""
    times: dict[str, list[float]] = {"direct": [], "hybrid K=100": [], "bi-encoder K=100 (warm)": []}
    for query, documents in sets:
        base = {"query": query, "documents": documents}
        times["direct"].append(timed(client, url, {**base, "strategy": "direct"})[0])
        times["hybrid K=100"].append(timed(client, url, {**base, "strategy": "hybrid", "candidates": CANDIDATES})[0])
        bi = {**base, "strategy": "bi-encoder", "candidates": CANDIDATES}
        timed(client, url, bi)  # fills the embedding cache with these documents
        times["bi-encoder K=100 (warm)"].append(timed(client, url, bi)[0])
        print(f"  round: {', '.join(f'{k} {v[-1]:.0f} ms' for k, v in times.items())}", file=sys.stderr)
    return times


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
        elapsed, meta = timed(client, url, body)
        outcomes.append({"ms": elapsed, "strategy": meta["strategy"], "candidates": meta["candidates"], **meta})
    return outcomes


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
    args = parser.parse_args()

    sets = candidate_sets(max(args.rounds, 20))
    log = Path(tempfile.mkdtemp(prefix="rerankd-bench-")) / "server.log"
    with Server(Path(args.model), log) as server, httpx.Client(timeout=600) as client:
        timed(client, server.url, {"query": sets[0][0], "documents": sets[0][1][:200]})  # first-request costs
        times = compare(client, server.url, sets[: args.rounds])
        auto = auto_loop(client, server.url, sets, args.auto_requests, args.auto_limit_s)

    direct = percentile(times["direct"], 50)
    rows = []
    for name, values in times.items():
        p50 = percentile(values, 50)
        rows.append(
            {
                "strategy": name,
                "p50_ms": p50,
                "docs_per_s": 1000 * DOCUMENTS / p50,
                "speedup": direct / p50,
                "requests": len(values),
            }
        )
    latencies = [o["ms"] for o in auto]
    within = sum(ms <= BUDGET_MS for ms in latencies) / max(len(latencies), 1)
    rows.append(
        {
            "strategy": f"auto, budget {BUDGET_MS:.0f} ms",
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
            "docs_per_s": 1000 * DOCUMENTS / percentile(latencies, 50),
            "speedup": direct / percentile(latencies, 50),
            "requests": len(latencies),
            "within_budget": within,
            "median_K": percentile([o["candidates"] for o in auto], 50),
        }
    )
    print(format_table(rows, ["strategy", "p50_ms", "p99_ms", "docs_per_s", "speedup", "requests", "within_budget"]))
    targets = {
        "hybrid >= 8x direct": rows[1]["speedup"] >= 8,
        "bi-encoder (warm) >= 5x direct": rows[2]["speedup"] >= 5,
        "auto within budget >= 95%": within >= 0.95,
    }
    for name, met in targets.items():
        print(f"{'met ' if met else 'MISSED'}  {name}")
    path = save("hybrid", {"documents": DOCUMENTS, "rows": rows, "times_ms": times, "auto": auto, "targets": targets})
    plot(rows, auto, plot_path("hybrid"))
    print(f"wrote {path} and {plot_path('hybrid')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
