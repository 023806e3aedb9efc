"""Score cache: what a repeated or overlapping request costs, on a real `rerankd serve` (loopback, Cohere v2).

Per round: a fresh request of `--documents` (300; all misses), the same request again (all hits), and a "next page"
that shares half its documents with the first. Rounds use new documents each time. Baseline: a second server with
the cache off (`--score-cache-mb 0`), the same requests, interleaved with the cached server's (order flipped each
round). Prints a table, saves JSON and a PNG in bench/results/, and checks issue 12's target: the repeated request
at least 50x faster than with the cache off.

    .venv/bin/python bench/score_cache.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import TRAINED_CE, format_table, plot_path, save
from throughput import Served, documents

from rerankd.models import resolve_model
from rerankd.models.fixture import build_ce_fixture

REPEAT_TARGET = 50.0  # a repeated request vs the same request with the cache off


def timed(server: Served, docs: list[str]) -> float:
    started = time.perf_counter()
    server(docs)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--documents", type=int, default=300)
    args = parser.parse_args()
    DOCS = args.documents
    spec = resolve_model(str(TRAINED_CE) if TRAINED_CE.is_dir() else str(build_ce_fixture()))
    corpus = documents(spec, DOCS * 2 * args.rounds + DOCS, seed=5)
    logs = Path(tempfile.mkdtemp(prefix="rerankd-cache-"))
    # Both servers up at once (an idle one costs no CPU), each round's requests alternating between them and the
    # order flipped every round, so drift in the machine's speed falls on both alike.
    servers = {
        mode: Served(spec, "onnx", "fp32", logs / f"{size}.log", extra=["--score-cache-mb", size])
        for mode, size in (("cache off", "0"), ("cache on", "64"))
    }  # Served turns the cache off; a later flag wins, so "64" turns it back on.
    cases = ("fresh", "repeat", "next page (half new)")
    samples: dict[str, dict[str, list[float]]] = {mode: {case: [] for case in cases} for mode in servers}
    try:
        for server in servers.values():
            server(corpus[-DOCS:])  # warm
        for r in range(args.rounds):
            page = corpus[r * 2 * DOCS : r * 2 * DOCS + DOCS]
            following = corpus[r * 2 * DOCS + DOCS // 2 : r * 2 * DOCS + DOCS + DOCS // 2]
            for case, docs in zip(cases, (page, page, following), strict=True):
                for mode in list(servers)[:: 1 if r % 2 == 0 else -1]:
                    samples[mode][case].append(timed(servers[mode], docs))
    finally:
        for server in servers.values():
            server.close()
    rows = []
    for case in samples["cache off"]:
        off, on = (float(np.median(samples[m][case])) for m in ("cache off", "cache on"))
        rows.append({"request": case, "cache_off_ms": off * 1000, "cache_on_ms": on * 1000, "speedup": off / on})
    print(format_table(rows, list(rows[0])))
    repeat = next(r["speedup"] for r in rows if r["request"] == "repeat")
    check = {"check": "repeated request vs cache off", "measured": round(repeat, 1), "limit": f">= {REPEAT_TARGET:g}x",
             "ok": repeat >= REPEAT_TARGET}  # fmt: skip
    print(format_table([check], list(check)))
    path = save("score_cache", {"args": vars(args), "model": spec.name, "documents": DOCS, "rows": rows,
                                "checks": [check], "samples": samples})  # fmt: skip
    plot(rows, DOCS)
    print(f"saved {path} and {plot_path('score_cache')}")


def plot(rows: list[dict], documents: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    x = np.arange(len(rows))
    axis.bar(x - 0.2, [r["cache_off_ms"] for r in rows], 0.4, label="cache off")
    axis.bar(x + 0.2, [r["cache_on_ms"] for r in rows], 0.4, label="cache on")
    axis.set_xticks(x, [r["request"] for r in rows])
    axis.set_ylabel(f"median latency of a {documents}-document request (ms)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(plot_path("score_cache"), dpi=120)


if __name__ == "__main__":
    main()
