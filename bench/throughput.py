"""Throughput and latency of rerankd's engines against sentence-transformers and Infinity, in one run on one machine.

For 10, 50, 100, 300 and 1000 mixed-length documents (20-300 tokens, cut from Debian descriptions when present,
else generated) and the ce-fixture model (ms-marco-MiniLM-L6-v2's shape; `--model DIR` for another), it measures
docs/sec and p50/p99 latency of: sentence-transformers `CrossEncoder.predict` fp32 (the baseline and the reference
scores) and, on CPUs with bf16 arithmetic, sentence-transformers in bf16 (`model_kwargs={"torch_dtype":
torch.bfloat16}`, a peer a user gets by one argument); rerankd torch, onnx fp32 and onnx int8 (or `--engines`: the
OpenVINO engines, `auto`), in-process (Engine) and through `rerankd serve` over HTTP; then 16 concurrent clients
sending 10-document requests against the same requests sent one at a time; and the machine's fp32 (numpy), bf16
(torch) and int8 (onnxruntime MatMulInteger) matrix-multiply peaks, with the fraction of them each engine reaches.
Every system's scores on the same request are compared with the reference's (Spearman, top-10 overlap).

Checks (printed with their limits, applied to `auto` over HTTP at 300 and 1,000 documents): >= 5x
sentence-transformers fp32 on a CPU with int8 dot products and bf16 (>= 2.5x on one without), >= 2.5x
sentence-transformers bf16 and >= 2.5x Infinity int8 where those ran.

Infinity (michaelfeil/infinity) joins as a peer over HTTP, fp32 and int8, when its `infinity_emb` is given by
`--infinity PATH` or RERANKD_BENCH_INFINITY. It pins numpy<2 and sentence-transformers<4, so it lives in its own
environment, never in .venv:

    python3 -m venv /work/infinity-venv
    /work/infinity-venv/bin/pip install torch==2.13.0 'infinity-emb[server,torch]==0.0.78'

    .venv/bin/python bench/throughput.py [--quick]
    .venv/bin/python bench/throughput.py --model ../shared/models/debian-minilm-ce --counts 300 1000 --min-rounds 1 \
        --engines auto onnx-fp32 onnx-int8-rescore openvino-bf16 --no-in-process --requests 0 \
        --infinity /work/infinity-venv/bin/infinity_emb --name throughput-peers
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
from common import (
    DEBIAN_DATA,
    check,
    cpu_line,
    format_table,
    machine,
    percentile,
    plot_path,
    save,
    spearman,
    top_k_overlap,
)

from rerankd.backends.select import choose
from rerankd.config import Settings
from rerankd.cores import available_cores
from rerankd.cpu import this_cpu
from rerankd.engine.engine import Engine
from rerankd.models import ModelSpec, resolve_model
from rerankd.models.fixture import build_ce_fixture
from rerankd.reporting import cpu
from testing.processes import stop

QUERY = "lightweight embedded SQL database library"
ENGINES = {
    "torch": ("torch", "fp32"),
    "onnx-fp32": ("onnx", "fp32"),
    "onnx-int8": ("onnx", "int8"),
    "auto": ("auto", "auto"),  # what a user gets without flags; the table's `engine` column says what it picked
    "onnx-int8-rescore": ("onnx", "int8-rescore"),
    "openvino-fp32": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),
    "openvino-int8": ("openvino", "int8"),
    "openvino-int8-rescore": ("openvino", "int8-rescore"),
}
DEFAULT_ENGINES = ("torch", "onnx-fp32", "onnx-int8")
# int8-rescore re-scores the head in the service (pipeline/rescore.py), not in the Engine: over HTTP only.
HTTP_ONLY = frozenset({"onnx-int8-rescore", "openvino-int8-rescore"})
REFERENCE = "sentence-transformers/in-process"
BF16_PEER = "sentence-transformers-bf16/in-process"
# `auto` over HTTP against the peers, at these document counts (the limits the checks print and apply).
CHECK_COUNTS = (300, 1000)
TARGETS = {"vs_st": {"bf16": 5.0, "other": 2.5}, "vs_st_bf16": 2.5, "vs_infinity_int8": 2.5}
INFINITY_ENV = "RERANKD_BENCH_INFINITY"
INFINITY_DTYPES = ("float32", "int8")  # Infinity 0.0.78's --dtype names
CLIENTS = 16
CLIENT_DOCS = 10
FRESH_REQUESTS = 8  # distinct document sets per count, one per timed round (cycled)


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
    long_enough = [text for text, tokens in zip(pool, tokenizer.tokens(pool), strict=True) if len(tokens) >= 300]
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
    """fp32 GEMM (numpy's BLAS), bf16 GEMM (torch, where the CPU has bf16 arithmetic) and int8 GEMM (onnxruntime
    MatMulInteger), GFLOP/s, on encoder-like shapes."""
    import onnxruntime
    import torch
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    peaks = {"fp32": 0.0, "int8": 0.0} | ({"bf16": 0.0} if this_cpu().bf16 else {})
    torch.set_num_threads(available_cores())
    for m, k, n in [(4096, 384, 1536), (4096, 1536, 384), (2048, 2048, 2048)]:
        a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
        peaks["fp32"] = max(peaks["fp32"], timed_best(lambda a=a, b=b: a @ b, 2.0 * m * k * n, budget))
        if "bf16" in peaks:
            x, y = torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16()
            peaks["bf16"] = max(peaks["bf16"], timed_best(lambda x=x, y=y: x @ y, 2.0 * m * k * n, budget))
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


# -- runners: each scores one request of documents and returns the scores when they are back ----------------------


class Runner(Protocol):
    engine: str  # backend/device/precision that actually ran, for the table

    def __call__(self, docs: list[str]) -> np.ndarray:
        """Relevance score per document, in document order."""
        ...

    def close(self) -> None: ...


class InProcess:
    """A rerankd Engine in this process (tokenization included, as a request pays it)."""

    def __init__(self, spec: ModelSpec, backend: str, precision: str) -> None:
        settings = Settings(backend=backend, precision=precision, device="cpu", warmup_seconds=0, score_cache_mb=0)
        self.engine_ = Engine.load(spec, settings)
        self.engine = self.engine_.description
        self.loop = asyncio.new_event_loop()

    def __call__(self, docs: list[str]) -> np.ndarray:
        async def one() -> np.ndarray:
            return await self.engine_.score(await self.engine_.prepare(QUERY, docs))

        return self.loop.run_until_complete(one())

    def close(self) -> None:
        self.engine_.close()
        self.loop.close()


class Baseline:
    """sentence-transformers `CrossEncoder.predict`, fp32 as the current service calls it (or bf16, one argument
    away for its users on CPUs with bf16 arithmetic)."""

    def __init__(self, spec: ModelSpec, precision: str = "fp32") -> None:
        import torch
        from sentence_transformers import CrossEncoder

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
        self.engine = f"torch/cpu/{precision}"
        self.model = CrossEncoder(str(spec.path), device="cpu", model_kwargs={"torch_dtype": dtype})

    def __call__(self, docs: list[str]) -> np.ndarray:
        return np.asarray(self.model.predict([(QUERY, doc) for doc in docs], show_progress_bar=False))

    def close(self) -> None:
        pass


class HttpServer:
    """A server in a subprocess on 127.0.0.1, started as a user starts it, polled until ready (bounded), then sent
    Cohere-shaped rerank requests; it is terminated (then killed) at `close`."""

    endpoint = "/v2/rerank"
    ready_path = "/ready"
    engine = "?"

    def __init__(self, name: str, command: Callable[[int], list[str]], log: Path, env: dict[str, str] | None = None,
                 ready_seconds: float = 300) -> None:  # fmt: skip
        port = _free_port()
        with log.open("w") as out:
            self.process = subprocess.Popen(command(port), stdout=out, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=600)
        deadline = time.monotonic() + ready_seconds
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{name} did not become ready:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            return self.client.get(self.ready_path).status_code == 200
        except httpx.TransportError:
            return False

    def __call__(self, docs: list[str]) -> np.ndarray:
        response = self.client.post(self.endpoint, json={"query": QUERY, "documents": docs})
        response.raise_for_status()
        scores = np.full(len(docs), np.nan)
        for result in response.json()["results"]:
            scores[result["index"]] = result["relevance_score"]
        return scores

    def close(self) -> None:
        self.client.close()
        stop(self.process)


class Served(HttpServer):
    """`rerankd serve`; requests use the Cohere v2 endpoint.

    No score cache, no admission limit and no deadline: benchmarks repeat documents and measure the engine, which
    a shared CPU may slow past the 60 s default (later `extra` flags win, for a benchmark that wants any of them)."""

    def __init__(self, spec: ModelSpec, backend: str, precision: str, log: Path, extra: Sequence[str] = ()) -> None:
        def command(port: int) -> list[str]:
            return [
                sys.executable, "-m", "rerankd.cli", "serve", "--model", str(spec.path), "--port", str(port),
                "--backend", backend, "--precision", precision, "--device", "cpu", "--warmup-seconds", "0",
                "--score-cache-mb", "0", "--max-queue-seconds", "0", "--request-timeout-seconds", "0",
                "--log-level", "warning", *extra,
            ]  # fmt: skip

        super().__init__("rerankd serve", command, log)
        self.engine = self.client.get("/v1/models").json()["data"][0]["engine"]  # what `auto` resolved to

    def concurrent(self, requests: list[list[str]], clients: int) -> float:
        """Send `requests` from `clients` concurrent connections; returns the wall time for all of them."""

        async def run() -> None:
            queue = list(requests)
            async with httpx.AsyncClient(base_url=self.url, timeout=600) as client:

                async def worker() -> None:
                    while queue:
                        body = {"query": QUERY, "documents": queue.pop()}
                        (await client.post(self.endpoint, json=body)).raise_for_status()

                await asyncio.gather(*(worker() for _ in range(clients)))

        started = time.perf_counter()
        asyncio.run(run())
        return time.perf_counter() - started


class Infinity(HttpServer):
    """Infinity's server (`infinity_emb v2`) from its own environment, torch engine on the CPU, at `dtype` (its
    names: float32, int8); its Cohere-compatible `/rerank`, readiness on `/health` (answered once the model
    is loaded and warmed)."""

    endpoint = "/rerank"
    ready_path = "/health"

    def __init__(self, executable: Path, spec: ModelSpec, dtype: str, log: Path) -> None:
        def command(port: int) -> list[str]:
            return [
                str(executable), "v2", "--model-id", str(spec.path), "--engine", "torch", "--device", "cpu",
                "--dtype", dtype, "--no-vector-disk-cache", "--host", "127.0.0.1", "--port", str(port),
                "--log-level", "warning",
            ]  # fmt: skip

        # Offline (the model is a local folder) and without usage reporting.
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
        super().__init__(f"infinity_emb ({dtype})", command, log, env=env, ready_seconds=600)
        self.engine = f"torch/cpu/{dtype}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def infinity_executable(given: str | None) -> Path | None:
    """Infinity's `infinity_emb` from `--infinity` or RERANKD_BENCH_INFINITY; None (and says why) when absent."""
    path = given or os.environ.get(INFINITY_ENV)
    if not path:
        print(f"Infinity: skipped (not installed here: pass --infinity PATH or set {INFINITY_ENV})", flush=True)
        return None
    if not os.access(path, os.X_OK):
        print(f"Infinity: skipped ({path} is not an executable)", flush=True)
        return None
    return Path(path)


# -- measuring ----------------------------------------------------------------------------------------------------


def measure(
    runners: dict[str, Runner], rounds_docs: Sequence[list[str]], budget: Budget, reference: str
) -> dict[str, dict]:
    """Latency of each runner, interleaved round by round so that a busy machine slows all alike; each round is a
    request of new documents (`rounds_docs`, cycled), as a server sees, so no engine is timed on inputs it has
    already seen. Fidelity: each runner's scores against `reference`'s on the last round's request."""
    for run in runners.values():
        run(rounds_docs[0][:20])  # untimed: first-call costs
    latencies: dict[str, list[float]] = {name: [] for name in runners}
    scores: dict[str, np.ndarray] = {}
    rounds, deadline = 0, time.perf_counter() + budget.seconds
    while rounds < budget.min_runs or (rounds < budget.max_runs and time.perf_counter() < deadline):
        docs = rounds_docs[rounds % len(rounds_docs)]
        for name, run in runners.items():
            started = time.perf_counter()
            scores[name] = run(docs)
            latencies[name].append(time.perf_counter() - started)
        rounds += 1
    count = len(rounds_docs[0])
    return {
        name: {
            "docs_per_s": count / float(np.mean(times)),
            "p50_ms": percentile(times, 50) * 1000,
            "p99_ms": percentile(times, 99) * 1000,
            "runs": len(times),
            "spearman": spearman(scores[reference], scores[name]),
            "top10_overlap": top_k_overlap(scores[reference], scores[name]),
        }
        for name, times in latencies.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10-100 documents, short loops (a smoke run)")
    parser.add_argument("--no-http", action="store_true", help="skip the served measurements")
    parser.add_argument("--no-in-process", action="store_true", help="rerankd over HTTP only (the baseline stays)")
    parser.add_argument("--counts", type=int, nargs="+", help="document counts (default 10 50 100 300 1000)")
    parser.add_argument(
        "--requests", type=int, help="10-document requests in the concurrency test (default 64, 0: none)"
    )
    parser.add_argument(
        "--engines", nargs="+", choices=list(ENGINES), help=f"rerankd engines (default {' '.join(DEFAULT_ENGINES)})"
    )
    parser.add_argument("--model", help="model folder (default: the ce-fixture, MiniLM-L6 cross-encoder shape)")
    parser.add_argument(
        "--min-rounds", type=int, help="timed rounds at least, per count (default 2, 1 over 300 documents)"
    )
    parser.add_argument("--infinity", help=f"Infinity's infinity_emb, in its own environment (or {INFINITY_ENV})")
    parser.add_argument("--name", help="results file name (default throughput, or throughput-quick)")
    args = parser.parse_args()
    engines = {name: ENGINES[name] for name in args.engines or DEFAULT_ENGINES}
    counts = args.counts or ([10, 50, 100] if args.quick else [10, 50, 100, 300, 1000])
    seconds = 3.0 if args.quick else 30.0
    concurrent_requests = args.requests if args.requests is not None else (16 if args.quick else 64)
    infinity = None if args.no_http else infinity_executable(args.infinity)
    print(f"cpu: {cpu_line(machine())}", flush=True)
    log_dir = Path(tempfile.mkdtemp(prefix="rerankd-throughput-"))
    print(f"server logs: {log_dir}", flush=True)

    spec = resolve_model(args.model or str(build_ce_fixture()))
    corpus = documents(spec, max(counts) * FRESH_REQUESTS)
    peaks = gemm_peaks(Budget(seconds=1.0 if args.quick else 3.0, min_runs=2, max_runs=50))
    print("matrix-multiply peaks: " + ", ".join(f"{k} {v:.0f} G/s" for k, v in peaks.items()), flush=True)

    # Every system is loaded at once and measured in turn, so that their ratios come from the same minutes.
    runners: dict[str, Runner] = {REFERENCE: Baseline(spec)}
    precisions = {REFERENCE: "fp32"}  # the GEMM peak each is held against
    if this_cpu().bf16:
        runners[BF16_PEER], precisions[BF16_PEER] = Baseline(spec, "bf16"), "bf16"
    served: dict[str, Served] = {}
    rows: list[dict[str, Any]] = []
    concurrency: list[dict[str, Any]] = []
    try:
        for name, (backend, precision) in engines.items():
            scoring = choose(Settings(backend=backend, precision=precision, device="cpu"), kind=spec.kind)
            if not args.no_in_process and name not in HTTP_ONLY:
                runners[f"{name}/in-process"] = InProcess(spec, backend, precision)
                precisions[f"{name}/in-process"] = scoring.scoring_precision
            if not args.no_http:
                log = log_dir / f"{name}.log"
                served[name] = runners[f"{name}/http"] = Served(spec, backend, precision, log)
                precisions[f"{name}/http"] = scoring.scoring_precision
        for dtype in INFINITY_DTYPES if infinity is not None else ():
            system = f"infinity-{'fp32' if dtype == 'float32' else dtype}/http"
            runners[system] = Infinity(infinity, spec, dtype, log_dir / f"infinity-{dtype}.log")
            precisions[system] = "int8" if dtype == "int8" else "fp32"
        for count in counts:
            requests = [corpus[i * count : (i + 1) * count] for i in range(FRESH_REQUESTS)]
            flops = float(np.mean([pair_flops(spec, _pair_lengths(spec, docs)) for docs in requests]))
            budget = Budget(seconds=seconds, min_runs=args.min_rounds or (2 if count <= 300 else 1), max_runs=20)
            for key, result in measure(runners, requests, budget, REFERENCE).items():
                system, mode = key.split("/")
                achieved = flops * result["docs_per_s"] / count / 1e9
                peak = peaks.get(precisions[key], peaks["fp32"])
                rows.append({"system": system, "mode": mode, "engine": runners[key].engine, "docs": count, **result,
                             "peak_fraction": achieved / peak})  # fmt: skip
            print(format_table(rows[-len(runners) :], list(rows[-1])), flush=True)
        rng = random.Random(1)
        small = [rng.sample(corpus, CLIENT_DOCS) for _ in range(concurrent_requests)]
        concurrency = (
            [concurrency_row(name, server, small, best_served(rows, name)) for name, server in served.items()]
            if concurrent_requests
            else []
        )
    finally:
        for runner in runners.values():
            runner.close()
        if rows:  # what was measured is saved even when a later count fails
            _add_ratios(rows)
            name = args.name or ("throughput-quick" if args.quick else "throughput")
            report(rows, concurrency, peaks, spec, name, checks(rows))


def checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`auto` over HTTP against each peer that ran, at CHECK_COUNTS: rows whose `ok` applies the printed limit."""
    found = []
    vs_st = TARGETS["vs_st"]["bf16" if this_cpu().bf16 and this_cpu().int8_dot else "other"]
    for row in rows:
        if (row["system"], row["mode"]) != ("auto", "http") or row["docs"] not in CHECK_COUNTS:
            continue
        for ratio, limit in (("vs_st", vs_st), ("vs_st_bf16", TARGETS["vs_st_bf16"]),
                             ("vs_infinity_int8", TARGETS["vs_infinity_int8"])):  # fmt: skip
            if ratio in row:
                found.append(check(f"auto ({row['engine']}) {ratio} at {row['docs']} docs", row[ratio], ">=", limit))
    return found


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
    """Speed vs the baseline (and vs Infinity's int8, when it ran) at the same document count, and HTTP overhead vs
    the same engine in-process (when that ran)."""
    by_key = {(row["system"], row["mode"], row["docs"]): row for row in rows}
    for row in rows:
        row["vs_st"] = row["docs_per_s"] / by_key[("sentence-transformers", "in-process", row["docs"])]["docs_per_s"]
        bf16 = by_key.get(("sentence-transformers-bf16", "in-process", row["docs"]))
        if bf16:
            row["vs_st_bf16"] = row["docs_per_s"] / bf16["docs_per_s"]
        peer = by_key.get(("infinity-int8", "http", row["docs"]))
        if peer:
            row["vs_infinity_int8"] = row["docs_per_s"] / peer["docs_per_s"]
        local = by_key.get((row["system"], "in-process", row["docs"]))
        if row["mode"] == "http" and local:
            row["http_overhead"] = local["docs_per_s"] / row["docs_per_s"] - 1


def report(rows: list[dict[str, Any]], concurrency: list[dict[str, Any]], peaks: dict, spec: ModelSpec,
           name: str, found: list[dict[str, Any]]) -> None:  # fmt: skip
    columns = ["system", "mode", "engine", "docs", "docs_per_s", "p50_ms", "p99_ms", "vs_st", "vs_st_bf16",
               "vs_infinity_int8", "spearman", "top10_overlap", "http_overhead", "peak_fraction"]  # fmt: skip
    print(f"\n{spec.name}; cpu: {cpu_line(machine())}; reference scores: sentence-transformers in-process")
    print(format_table(rows, [c for c in columns if any(c in row for row in rows)]))
    if concurrency:
        print("\n" + format_table(concurrency, list(concurrency[0])))
    if found:
        print("\n" + format_table(found, ["check", "measured", "limit", "ok"]))
    payload = {"model": spec.name, "peaks_gflops": peaks, "cores": os.cpu_count(), "rows": rows,
               "concurrency": concurrency, "checks": found}  # fmt: skip
    path = save(name, payload)
    plot(rows, spec, plot_path(name))
    print(f"\nsaved {path} and {plot_path(name)}")


def plot(rows: list[dict[str, Any]], spec: ModelSpec, path: Path) -> None:
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
    axis.set_title(f"{spec.name}, one request at a time; {cpu()['model']}")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
