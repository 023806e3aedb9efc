"""Throughput and latency of rerankd's engines against sentence-transformers, in one run on one machine.

For 10, 50, 100, 300 and 1000 mixed-length documents (20-300 tokens, cut from Debian descriptions when present,
else generated) and the ce-fixture model (ms-marco-MiniLM-L6-v2's shape), it measures docs/sec and p50/p99
latency of: sentence-transformers `CrossEncoder.predict` fp32 (the baseline), rerankd torch, onnx fp32 and onnx
int8, in-process (Engine) and through `rerankd serve` over HTTP; then 16 concurrent clients sending 10-document
requests against the same requests sent one at a time; and the machine's fp32 (numpy) and int8 (onnxruntime
MatMulInteger) matrix-multiply peaks, with the fraction of them each engine reaches.

    .venv/bin/python bench/throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
from common import DEBIAN_DATA, format_table, percentile, plot_path, save

from rerankd.config import Settings
from rerankd.cores import available_cores
from rerankd.engine.engine import Engine
from rerankd.models import ModelSpec, resolve_model
from rerankd.models.fixture import build_ce_fixture

QUERY = "lightweight embedded SQL database library"
ENGINES = {"torch": ("torch", "fp32"), "onnx-fp32": ("onnx", "fp32"), "onnx-int8": ("onnx", "int8")}
CLIENTS = 16
CLIENT_DOCS = 10


@dataclass(frozen=True)
class Budget:
    """Every timed loop stops at `max_runs` or once `seconds` have passed (after at least `min_runs`)."""

    seconds: float
    min_runs: int
    max_runs: int


# -- documents ----------------------------------------------------------------------------------------------------


def documents(spec: ModelSpec, count: int, seed: int = 0) -> list[str]:
    """`count` documents of 20-300 tokens each (uniform), cut from Debian descriptions at token boundaries."""
    from rerankd.engine.tokenize import Tokenizer

    tokenizer = Tokenizer(spec)
    rng = random.Random(seed)
    targets = [rng.randint(20, 300) for _ in range(count)]
    pool = _debian_texts(rng) if DEBIAN_DATA.is_dir() else []
    long_enough = [text for text, n in zip(pool, tokenizer.count_tokens(pool), strict=True) if n >= 300]
    if not long_enough:  # no data set: generated prose of the same lengths
        words = ["package", "library", "database", "server", "client", "tool", "data", "file", "network", "user"]
        long_enough = [" ".join(rng.choice(words) for _ in range(400)) for _ in range(50)]
    return [tokenizer.clip(rng.choice(long_enough), target) for target in targets]


def _debian_texts(rng: random.Random, limit: int = 4000) -> list[str]:
    with (DEBIAN_DATA / "corpus.jsonl").open(encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for _, line in zip(range(20_000), lines, strict=False)]
    return rng.sample(texts, min(limit, len(texts)))


# -- the machine's matrix-multiply peaks --------------------------------------------------------------------------


def timed_best(run: Callable[[], object], flops: float, budget: Budget) -> float:
    """Best rate (FLOP/s) over bounded repeats."""
    run()
    best, runs, deadline = 0.0, 0, time.perf_counter() + budget.seconds
    while runs < budget.min_runs or (runs < budget.max_runs and time.perf_counter() < deadline):
        started = time.perf_counter()
        run()
        best = max(best, flops / (time.perf_counter() - started))
        runs += 1
    return best


def gemm_peaks(budget: Budget) -> dict[str, float]:
    """fp32 GEMM (numpy's BLAS) and int8 GEMM (onnxruntime MatMulInteger), GFLOP/s, on encoder-like shapes."""
    import onnxruntime
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    peaks = {"fp32": 0.0, "int8": 0.0}
    for m, k, n in [(4096, 384, 1536), (4096, 1536, 384), (2048, 2048, 2048)]:
        a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
        peaks["fp32"] = max(peaks["fp32"], timed_best(lambda a=a, b=b: a @ b, 2.0 * m * k * n, budget))
        weights = helper.make_tensor("B", TensorProto.INT8, [k, n], rng.integers(-127, 127, k * n).tolist())
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
            "int8_gemm",
            [helper.make_tensor_value_info("A", TensorProto.UINT8, [m, k])],
            [helper.make_tensor_value_info("Y", TensorProto.INT32, [m, n])],
            [weights],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = available_cores()
        session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds = {"A": rng.integers(0, 255, (m, k), dtype=np.uint8)}
        rate = timed_best(lambda s=session, f=feeds: s.run(None, f), 2.0 * m * k * n, budget)
        peaks["int8"] = max(peaks["int8"], rate)
    return {name: rate / 1e9 for name, rate in peaks.items()}


def pair_flops(spec: ModelSpec, token_counts: list[int]) -> float:
    """Useful FLOPs of the encoder over these unpadded pair lengths: the linear layers plus attention's products."""
    config = json.loads((spec.path / "config.json").read_text())
    hidden, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * inner)  # Q, K, V, output projections and the MLP
    return float(sum(layers * (per_token * n + 4 * n * n * hidden) for n in token_counts))


# -- runners: each scores one request of documents and returns when the scores are back ----------------------------


class Runner(Protocol):
    def __call__(self, docs: list[str]) -> None: ...

    def close(self) -> None: ...


class InProcess:
    """A rerankd Engine in this process (tokenization included, as a request pays it)."""

    def __init__(self, spec: ModelSpec, backend: str, precision: str) -> None:
        settings = Settings(backend=backend, precision=precision, device="cpu", warmup_seconds=0, score_cache_mb=0)
        self.engine = Engine.load(spec, settings)
        self.loop = asyncio.new_event_loop()

    def __call__(self, docs: list[str]) -> None:
        async def one() -> None:
            await self.engine.score(await self.engine.prepare(QUERY, docs))

        self.loop.run_until_complete(one())

    def close(self) -> None:
        self.engine.close()
        self.loop.close()


class Baseline:
    """sentence-transformers `CrossEncoder.predict` fp32, as the current service calls it."""

    def __init__(self, spec: ModelSpec) -> None:
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(str(spec.path), device="cpu")

    def __call__(self, docs: list[str]) -> None:
        self.model.predict([(QUERY, doc) for doc in docs], show_progress_bar=False)

    def close(self) -> None:
        pass


class Served:
    """`rerankd serve` in a subprocess on 127.0.0.1, as a user starts it; requests use the Cohere v2 endpoint.

    No score cache and no admission limit: benchmarks repeat documents and measure the engine (later `extra`
    flags win, for a benchmark that wants either)."""

    def __init__(self, spec: ModelSpec, backend: str, precision: str, log: Path, extra: Sequence[str] = ()) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [
            sys.executable, "-m", "rerankd.cli", "serve", "--model", str(spec.path), "--port", str(port),
            "--backend", backend, "--precision", precision, "--device", "cpu", "--warmup-seconds", "0",
            "--score-cache-mb", "0", "--max-queue-seconds", "0", "--log-level", "warning", *extra,
        ]  # fmt: skip
        with log.open("w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=600)
        deadline = time.monotonic() + 300
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"rerankd serve did not become ready:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            return self.client.get("/ready").status_code == 200
        except httpx.TransportError:
            return False

    def __call__(self, docs: list[str]) -> None:
        self.client.post("/v2/rerank", json={"query": QUERY, "documents": docs}).raise_for_status()

    def concurrent(self, requests: list[list[str]], clients: int) -> float:
        """Send `requests` from `clients` concurrent connections; returns the wall time for all of them."""

        async def run() -> None:
            queue = list(requests)
            async with httpx.AsyncClient(base_url=self.url, timeout=600) as client:

                async def worker() -> None:
                    while queue:
                        body = {"query": QUERY, "documents": queue.pop()}
                        (await client.post("/v2/rerank", json=body)).raise_for_status()

                await asyncio.gather(*(worker() for _ in range(clients)))

        started = time.perf_counter()
        asyncio.run(run())
        return time.perf_counter() - started

    def close(self) -> None:
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


# -- measuring ----------------------------------------------------------------------------------------------------


def measure(runners: dict[str, Runner], docs: list[str], budget: Budget) -> dict[str, dict]:
    """Latency of each runner on `docs`, interleaved round by round so that a busy machine slows all alike."""
    for run in runners.values():
        run(docs[:20])  # untimed: first-call costs
    latencies: dict[str, list[float]] = {name: [] for name in runners}
    rounds, deadline = 0, time.perf_counter() + budget.seconds
    while rounds < budget.min_runs or (rounds < budget.max_runs and time.perf_counter() < deadline):
        for name, run in runners.items():
            started = time.perf_counter()
            run(docs)
            latencies[name].append(time.perf_counter() - started)
        rounds += 1
    return {
        name: {
            "docs_per_s": len(docs) / float(np.mean(times)),
            "p50_ms": percentile(times, 50) * 1000,
            "p99_ms": percentile(times, 99) * 1000,
            "runs": len(times),
        }
        for name, times in latencies.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10-100 documents, short loops (a smoke run)")
    parser.add_argument("--no-http", action="store_true", help="skip the served measurements")
    parser.add_argument("--counts", type=int, nargs="+", help="document counts (default 10 50 100 300 1000)")
    parser.add_argument("--requests", type=int, help="10-document requests in the concurrency test (default 64)")
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), help="rerankd engines (default all)")
    parser.add_argument("--name", help="results file name (default throughput, or throughput-quick)")
    args = parser.parse_args()
    engines = {name: ENGINES[name] for name in args.engines or ENGINES}
    counts = args.counts or ([10, 50, 100] if args.quick else [10, 50, 100, 300, 1000])
    seconds = 3.0 if args.quick else 30.0
    concurrent_requests = args.requests or (16 if args.quick else 64)

    spec = resolve_model(str(build_ce_fixture()))
    corpus = documents(spec, max(counts))
    peaks = gemm_peaks(Budget(seconds=1.0 if args.quick else 3.0, min_runs=2, max_runs=50))
    print(f"matrix-multiply peak: fp32 {peaks['fp32']:.0f} GFLOP/s, int8 {peaks['int8']:.0f} GOP/s", flush=True)

    # Every system is loaded at once and measured in turn, so that their ratios come from the same minutes.
    runners: dict[str, Runner] = {"sentence-transformers/in-process": Baseline(spec)}
    precisions = {"sentence-transformers/in-process": "fp32"}
    for name, (backend, precision) in engines.items():
        runners[f"{name}/in-process"] = InProcess(spec, backend, precision)
        precisions[f"{name}/in-process"] = precision
    served: dict[str, Served] = {}
    try:
        if not args.no_http:
            log_dir = Path(tempfile.mkdtemp(prefix="rerankd-throughput-"))  # server logs, for post-mortems
            for name, (backend, precision) in engines.items():
                served[name] = runners[f"{name}/http"] = Served(spec, backend, precision, log_dir / f"{name}.log")
                precisions[f"{name}/http"] = precision
        rows = []
        for count in counts:
            docs = corpus[:count]
            flops = pair_flops(spec, _pair_lengths(spec, docs))
            budget = Budget(seconds=seconds, min_runs=2 if count <= 300 else 1, max_runs=20)
            for key, result in measure(runners, docs, budget).items():
                system, mode = key.split("/")
                achieved = flops * result["docs_per_s"] / count / 1e9
                peak = peaks["int8" if precisions[key] == "int8" else "fp32"]
                rows.append({"system": system, "mode": mode, "docs": count, **result, "peak_fraction": achieved / peak})
            print(format_table(rows[-len(runners) :], list(rows[-1])), flush=True)
        rng = random.Random(1)
        small = [rng.sample(corpus, CLIENT_DOCS) for _ in range(concurrent_requests)]
        concurrency = [concurrency_row(name, server, small, best_served(rows, name)) for name, server in served.items()]
    finally:
        for runner in runners.values():
            runner.close()
    _add_ratios(rows)
    report(rows, concurrency, peaks, args.name or ("throughput-quick" if args.quick else "throughput"))


def best_served(rows: list[dict[str, Any]], system: str) -> float:
    """The best docs/s this engine reached over HTTP with one large request: what batching can approach at most."""
    return max(row["docs_per_s"] for row in rows if row["system"] == system and row["mode"] == "http")


def concurrency_row(name: str, server: Served, requests: list[list[str]], saturated: float) -> dict[str, Any]:
    """The same 10-document requests one at a time, then from 16 concurrent clients. `ceiling` is the speed-up
    that would bring one-at-a-time up to the engine's best docs/s with large requests: on a compute-bound CPU,
    cross-request batching cannot give more than that."""
    server(requests[0])  # warm
    one_at_a_time = server.concurrent(requests, clients=1)
    together = server.concurrent(requests, clients=CLIENTS)
    docs = len(requests) * CLIENT_DOCS
    row = {
        "system": name,
        "requests": len(requests),
        "sequential_docs_per_s": docs / one_at_a_time,
        f"concurrent{CLIENTS}_docs_per_s": docs / together,
        "speedup": one_at_a_time / together,
        "ceiling": saturated * one_at_a_time / docs,
    }
    print(format_table([row], list(row)), flush=True)
    return row


def _pair_lengths(spec: ModelSpec, docs: list[str]) -> list[int]:
    from rerankd.engine.tokenize import Tokenizer

    tokenizer = Tokenizer(spec)
    return [len(item) for item in tokenizer.encode_pairs(tokenizer.tokens([QUERY])[0], docs)]


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """Speed vs the baseline at the same document count, and HTTP overhead vs the same engine in-process."""
    by_key = {(row["system"], row["mode"], row["docs"]): row for row in rows}
    for row in rows:
        base = by_key[("sentence-transformers", "in-process", row["docs"])]
        row["vs_st"] = row["docs_per_s"] / base["docs_per_s"]
        if row["mode"] == "http":
            local = by_key[(row["system"], "in-process", row["docs"])]
            row["http_overhead"] = local["docs_per_s"] / row["docs_per_s"] - 1


def report(rows: list[dict[str, Any]], concurrency: list[dict[str, Any]], peaks: dict, name: str) -> None:
    columns = ["system", "mode", "docs", "docs_per_s", "p50_ms", "p99_ms", "vs_st", "http_overhead", "peak_fraction"]
    print("\n" + format_table(rows, columns))
    if concurrency:
        print("\n" + format_table(concurrency, list(concurrency[0])))
    path = save(name, {"peaks_gflops": peaks, "cores": os.cpu_count(), "rows": rows, "concurrency": concurrency})
    plot(rows, plot_path(name))
    print(f"\nsaved {path} and {plot_path(name)}")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for system, mode in sorted({(row["system"], row["mode"]) for row in rows}):
        points = [(row["docs"], row["docs_per_s"]) for row in rows if (row["system"], row["mode"]) == (system, mode)]
        axis.plot(*zip(*points, strict=True), marker="o", linestyle="-" if mode == "in-process" else "--",
                  label=f"{system} ({mode})")  # fmt: skip
    axis.set_xscale("log")
    axis.set_xlabel("documents per request (20-300 tokens each)")
    axis.set_ylabel("documents / second")
    axis.set_title("ce-fixture (MiniLM-L6 cross-encoder), one request at a time")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
