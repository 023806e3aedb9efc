"""Small requests behind a large one on one server: `--scheduling fair` (the default) vs `fifo`.

A 300-document request arrives first; 10-document requests then arrive every second while it runs. With `fifo`
each small request waits for the rest of the large one; with `fair` each waiting request gets up to one batch in
turn (first turns first, then round-robin). Both servers (`rerankd serve`, ce-fixture, onnx fp32, 127.0.0.1, no
admission limit: this measures the scheduler alone) run the same scenario in alternating rounds; small requests
sent to an idle server give the floor. Prints a table, saves JSON and a PNG in bench/results/.

    .venv/bin/python bench/fairness.py [--rounds 2] [--small 8]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import format_table, percentile, plot_path, save
from throughput import QUERY, Served, documents

from rerankd.models import resolve_model
from rerankd.models.fixture import build_ce_fixture

LARGE_DOCS = 300
SMALL_DOCS = 10
SMALL_EVERY_S = 1.0


async def scenario(url: str, large: list[str] | None, smalls: list[list[str]]) -> tuple[float | None, list[float]]:
    """The large request (if any) at t=0, then one small request every SMALL_EVERY_S; latencies in seconds."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def timed(docs: list[str], delay: float) -> float:
            await asyncio.sleep(delay)
            started = time.perf_counter()
            (await client.post("/v2/rerank", json={"query": QUERY, "documents": docs})).raise_for_status()
            return time.perf_counter() - started

        small = [timed(docs, 0.2 + i * SMALL_EVERY_S) for i, docs in enumerate(smalls)]
        if large is None:
            return None, list(await asyncio.gather(*small))
        big, *rest = await asyncio.gather(timed(large, 0.0), *small)
        return big, rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--small", type=int, default=8, help="small requests per round")
    args = parser.parse_args()

    spec = resolve_model(str(build_ce_fixture()))
    corpus = documents(spec, LARGE_DOCS + args.small * SMALL_DOCS, seed=3)
    large = corpus[:LARGE_DOCS]
    smalls = [corpus[LARGE_DOCS + i * SMALL_DOCS : LARGE_DOCS + (i + 1) * SMALL_DOCS] for i in range(args.small)]
    logs = Path(tempfile.mkdtemp(prefix="rerankd-fairness-"))
    servers = {
        mode: Served(spec, "onnx", "fp32", logs / f"{mode}.log", extra=["--scheduling", mode])
        for mode in ("fifo", "fair")
    }
    samples: dict[str, dict[str, list[float]]] = {m: {"small": [], "large": []} for m in (*servers, "idle")}
    try:
        for server in servers.values():
            server(smalls[0])  # warm
        for _ in range(args.rounds):
            for mode, server in servers.items():
                big, small = asyncio.run(scenario(server.url, large, smalls))
                samples[mode]["large"].append(big)
                samples[mode]["small"] += small
            samples["idle"]["small"] += asyncio.run(scenario(servers["fair"].url, None, smalls))[1]
    finally:
        for server in servers.values():
            server.close()

    rows = []
    for mode, got in samples.items():
        rows.append({
            "scheduling": mode if mode != "idle" else "no large request (floor)",
            "small_requests": len(got["small"]),
            "small_p50_ms": percentile(got["small"], 50) * 1000,
            "small_max_ms": max(got["small"]) * 1000,
            "large_ms": float(np.mean(got["large"])) * 1000 if got["large"] else float("nan"),
        })  # fmt: skip
    fifo, fair = rows[0], rows[1]
    for row in rows:
        row["small_p50_vs_fifo"] = row["small_p50_ms"] / fifo["small_p50_ms"]
    print(format_table(rows, list(rows[0])))
    print(f"large request: fair {fair['large_ms'] / fifo['large_ms']:.2f}x the fifo latency")
    path = save("fairness", {"args": vars(args), "large_docs": LARGE_DOCS, "small_docs": SMALL_DOCS, "rows": rows,
                             "samples": samples})  # fmt: skip
    plot(samples)
    print(f"saved {path} and {plot_path('fairness')}")


def plot(samples: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    names = list(samples)
    axis.boxplot([np.array(samples[n]["small"]) * 1000 for n in names], tick_labels=names)
    axis.set_yscale("log")
    axis.set_ylabel(f"{SMALL_DOCS}-document request latency (ms)")
    axis.set_title(f"small requests arriving during a {LARGE_DOCS}-document request")
    figure.tight_layout()
    figure.savefig(plot_path("fairness"), dpi=120)


if __name__ == "__main__":
    main()
