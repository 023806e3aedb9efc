"""Overload: a real `rerankd serve` driven at 3x its measured capacity, and hostile request sizes.

1. Capacity: 2 closed-loop clients sending 50-document requests for `--capacity-seconds` (enough to keep the
   engine busy: one runs while the other waits; more would reach the admission limit, whose back-off idles it);
   requests per second.
2. Overload: an open loop (fixed arrival rate, every request on its own connection) at `--factor` x capacity for
   `--seconds`, each client waiting at most `--client-timeout` s. A 2-document request is sent every 5 s on top.
   Counted: answered (200), 429 (with Retry-After or not, and how fast), 504, other 5xx, client time-outs; accepted
   latency p50/p99; the server's RSS before and after.
3. Sizes: a 1 MB query, a 16 MB body and a 10 MB document, each timed, with the RSS growth.

Targets (a check applies the limit it prints): zero 5xx, 504 included; zero client time-outs; every rejection
a 429 with Retry-After within 50 ms; accepted p99 <= max_queue_seconds + one request's own scoring time; each
2-document request answered within 2 s; each size case answered or refused within 2 s, RSS growth < 300 MB.

    .venv/bin/python bench/overload.py [--model PATH] [--seconds 60] [--factor 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from common import TRAINED_CE, format_table, percentile, plot_path, save
from throughput import Served, documents

from rerankd.models import resolve_model
from rerankd.models.fixture import build_ce_fixture

DOCS = 50
QUERY = "library to read and write compressed archives"
REJECT_MS = 50.0
SMALL_SECONDS = 2.0
SIZE_SECONDS = 2.0
RSS_MB = 300.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def capacity(url: str, docs: list[str], seconds: float, clients: int = 2) -> tuple[float, float]:
    """Closed loop: answered requests per second, and their mean latency."""
    done, latencies = 0, []
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.post("/v2/rerank", json={"query": QUERY, "documents": docs})
                if response.status_code == 429:  # should not happen with a few clients; back off if it does
                    await asyncio.sleep(float(response.headers["retry-after"]))
                    continue
                response.raise_for_status()
                latencies.append(time.perf_counter() - started)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return done / elapsed, float(np.mean(latencies))


async def overload(url: str, docs: list[str], rate: float, seconds: float, timeout: float) -> dict[str, Any]:
    """Open loop at `rate` requests/s for `seconds`, plus a 2-document request every 5 s."""
    outcomes: list[dict[str, Any]] = []
    smalls: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=4000, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def one(at: float, body: dict[str, Any], into: list[dict[str, Any]]) -> None:
            await asyncio.sleep(at)
            started = time.perf_counter()
            record: dict[str, Any] = {"at": at}
            try:
                response = await client.post("/v2/rerank", json=body)
                record |= {"status": response.status_code, "retry_after": response.headers.get("retry-after")}
            except httpx.TimeoutException:
                record["status"] = "client-timeout"
            except httpx.TransportError as exc:
                record["status"] = f"transport: {type(exc).__name__}"
            record["seconds"] = time.perf_counter() - started
            into.append(record)

        body = {"query": QUERY, "documents": docs}
        arrivals = [one(i / rate, body, outcomes) for i in range(int(rate * seconds))]
        small = {"query": QUERY, "documents": docs[:2]}
        arrivals += [one(at, small, smalls) for at in np.arange(5.0, seconds, 5.0)]
        await asyncio.gather(*arrivals)
    return {"outcomes": outcomes, "smalls": smalls}


def sizes(url: str, pid: int, docs: list[str]) -> list[dict[str, Any]]:
    cases = {
        "1 MB query": {"query": "word " * 200_000, "documents": docs[:1000]},
        "16 MB body": {"query": QUERY, "documents": ["x" * (16 * 2**20)]},
        "10 MB document": {"query": QUERY, "documents": ["archive " * 1_250_000, *docs[:9]]},
    }
    rows = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, body in cases.items():
            content = json.dumps(body).encode()  # encoded first: the client's own cost is not the server's
            before = rss_mb(pid)
            started = time.perf_counter()
            response = client.post("/v2/rerank", content=content, headers={"content-type": "application/json"})
            seconds = time.perf_counter() - started
            rows.append({
                "case": name, "status": response.status_code, "seconds": seconds,
                "rss_growth_mb": rss_mb(pid) - before, "body_mb": len(content) / 2**20,
                "answer": response.text[:160] if response.status_code != 200 else "ranked",
            })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(TRAINED_CE) if TRAINED_CE.is_dir() else None)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--capacity-seconds", type=float, default=20)
    parser.add_argument("--client-timeout", type=float, default=90)
    parser.add_argument("--max-queue-seconds", type=float, default=10)
    args = parser.parse_args()

    spec = resolve_model(args.model or str(build_ce_fixture()))
    docs = documents(spec, 1000, seed=11)
    log = Path(tempfile.mkdtemp(prefix="rerankd-overload-")) / "server.log"
    # No score cache: every request repeats the same documents, and the point is the model under overload.
    extra = ["--max-queue-seconds", str(args.max_queue_seconds), "--embedding-model", "", "--score-cache-mb", "0"]
    server = Served(spec, "onnx", "fp32", log, extra=extra)
    pid = server.process.pid
    try:
        server(docs[:DOCS])  # warm
        per_second, mean_latency = asyncio.run(capacity(server.url, docs[:DOCS], args.capacity_seconds))
        rss_before = rss_mb(pid)
        rate = args.factor * per_second
        print(f"capacity {per_second:.2f} req/s ({DOCS} documents, mean {mean_latency:.2f} s); driving {rate:.2f}/s")
        run = asyncio.run(overload(server.url, docs[:DOCS], rate, args.seconds, args.client_timeout))
        rss_after = rss_mb(pid)
        size_rows = sizes(server.url, pid, docs)
        healthy = server.client.get("/health").status_code == 200
    finally:
        server.close()

    outcomes, smalls = run["outcomes"], run["smalls"]
    answered = [o["seconds"] for o in outcomes if o["status"] == 200]
    rejected = [o for o in outcomes if o["status"] == 429]
    own_seconds = 1 / per_second  # one request's scoring time when it has the machine to itself
    row = {
        "sent": len(outcomes),
        "answered": len(answered),
        "429": len(rejected),
        "429_with_retry_after": sum(o["retry_after"] is not None for o in rejected),
        "429_p99_ms": percentile([o["seconds"] for o in rejected], 99) * 1000,
        "504": sum(o["status"] == 504 for o in outcomes),
        "5xx_other": sum(isinstance(o["status"], int) and o["status"] >= 500 and o["status"] != 504 for o in outcomes),
        "client_timeouts": sum(not isinstance(o["status"], int) for o in outcomes),
        "accepted_p50_s": percentile(answered, 50),
        "accepted_p99_s": percentile(answered, 99),
        "small_max_s": max(o["seconds"] for o in smalls),
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
    }
    print(format_table([row], list(row)))
    print(format_table(size_rows, ["case", "status", "seconds", "rss_growth_mb", "body_mb", "answer"]))
    p99_limit = args.max_queue_seconds + own_seconds
    checks = {
        # 504 is a 5xx too: a request that waited past its deadline was accepted and then lost.
        "zero 5xx (504 included)": row["504"] == 0
        and row["5xx_other"] == 0
        and all(isinstance(o["status"], int) and o["status"] < 500 for o in smalls)
        and all(r["status"] < 500 for r in size_rows),
        "zero client time-outs": row["client_timeouts"] == 0,
        # At 3x capacity admission must turn requests away; without any 429 the rejection checks test nothing.
        "overload reached (some 429s)": row["429"] > 0,
        "every rejection a 429 with Retry-After": row["429_with_retry_after"] == row["429"],
        f"429 p99 <= {REJECT_MS:g} ms": not rejected or row["429_p99_ms"] <= REJECT_MS,
        f"accepted p99 <= {p99_limit:.1f} s (max_queue_seconds + own {own_seconds:.1f} s)": row["accepted_p99_s"]
        <= p99_limit,
        f"2-document requests answered within {SMALL_SECONDS:g} s": bool(smalls)
        and all(o["status"] == 200 for o in smalls)
        and row["small_max_s"] <= SMALL_SECONDS,
        f"size cases within {SIZE_SECONDS:g} s": all(r["seconds"] <= SIZE_SECONDS for r in size_rows),
        f"size cases RSS growth < {RSS_MB:g} MB": all(r["rss_growth_mb"] < RSS_MB for r in size_rows),
        "healthy after": healthy,
    }
    for name, ok in checks.items():
        print(f"{'MET ' if ok else 'MISSED'}  {name}")
    path = save("overload", {
        "args": vars(args), "model": spec.name, "documents_per_request": DOCS,
        "capacity_per_second": per_second, "rate_per_second": rate, "row": row, "sizes": size_rows,
        "checks": checks, "outcomes": outcomes, "smalls": smalls,
    })  # fmt: skip
    plot(outcomes, smalls, args.max_queue_seconds)
    print(f"saved {path} and {plot_path('overload')}")


def plot(outcomes: list[dict[str, Any]], smalls: list[dict[str, Any]], limit: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4))
    for status, colour in ((200, "tab:blue"), (429, "tab:orange"), (504, "tab:red")):
        points = [(o["at"], o["seconds"]) for o in outcomes if o["status"] == status]
        if points:
            axis.scatter(*zip(*points, strict=True), s=6, color=colour, label=str(status))
    if smalls:
        axis.scatter([o["at"] for o in smalls], [o["seconds"] for o in smalls], s=30, marker="x", color="k",
                     label="2 documents")  # fmt: skip
    axis.axhline(limit, color="grey", linestyle="--", label="max_queue_seconds")
    axis.set_yscale("log")
    axis.set_xlabel("arrival (s)")
    axis.set_ylabel("latency (s)")
    axis.set_title("3x overload: answers, 429s and latency by arrival time")
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(plot_path("overload"), dpi=120)


if __name__ == "__main__":
    main()
