"""Where OpenVINO spends a request's time on this CPU, and the options tried against it.

The trained cross-encoder's ONNX export in bf16 (int8 where the CPU has no bf16), compiled as `OpenVinoBackend` does:
- per layer type, OpenVINO's own counters (`PERF_COUNT`) over one 300-document request in the engine's length-sorted
  2,048-token batches padded to a multiple of 16, with the achieved FLOP rate of the fully connected layers against
  the matrix-multiply peak measured in the same run (torch, encoder-like shapes);
- the options tried, each interleaved with the backend's own settings (a stream of one thread per core, batches
  side by side) over new documents every round: one stream of every core's threads with batches in turn (the
  earlier setting, also timed on a 10-document request alone), OpenVINO's fused attention off
  (`SNIPPETS_MODE=DISABLE`), larger batches, and a model compiled for one static shape against the dynamic one on
  that same shape.

    .venv/bin/python bench/openvino_profile.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from typing import Any

import numpy as np
from common import TRAINED_CE, check, cpu_line, format_table, machine, plot_path, save
from throughput import QUERY, Budget, documents, gemm_peaks

from rerankd.backends.export import ensure_onnx
from rerankd.backends.openvino import read_dynamic
from rerankd.config import Settings
from rerankd.cores import available_cores
from rerankd.cpu import this_cpu
from rerankd.engine.scheduler import pack_batches
from rerankd.engine.tokenize import Tokenizer
from rerankd.models import resolve_model

BATCH_TOKENS = 2048
MULTIPLE = 16
SMALL_DOCS = 10  # a request of one batch: what a stream of one thread costs it


class Compiled:
    """A compiled model run as the backend runs it: `streams` batches side by side (a thread each), or one at a time
    on every core's thread when `streams` is 1."""

    def __init__(self, path: str, hint: str, *, streams: int = 1, shape: list[int] | None = None, **extra: Any):
        import openvino

        core = openvino.Core()
        model = read_dynamic(core, path)
        if shape is not None:
            model.reshape({port.get_any_name(): openvino.PartialShape(shape) for port in model.inputs})
        properties = {"INFERENCE_NUM_THREADS": available_cores(), "NUM_STREAMS": streams,
                      "PERFORMANCE_HINT": "THROUGHPUT" if streams > 1 else "LATENCY",
                      "INFERENCE_PRECISION_HINT": hint, "ENABLE_CPU_PINNING": False} | extra  # fmt: skip
        compiled = core.compile_model(model, "CPU", properties)
        self.inputs = {port.get_any_name() for port in compiled.inputs}
        self.request = compiled.create_infer_request()
        self.queue = openvino.AsyncInferQueue(compiled, streams) if streams > 1 else None

    def timed(self, batch_feeds: list[dict[str, np.ndarray]]) -> float:
        started = time.perf_counter()
        if self.queue is None:
            for feed in batch_feeds:
                self.request.infer(feed)
        else:
            for feed in batch_feeds:
                self.queue.start_async(feed)
            self.queue.wait_all()
        return time.perf_counter() - started


def feeds(tokenizer: Tokenizer, batches: list[list[Any]], inputs: set[str]) -> list[dict[str, np.ndarray]]:
    result = []
    for batch in batches:
        padded = tokenizer.collate(batch, MULTIPLE)
        feed = {"input_ids": padded.input_ids, "attention_mask": padded.attention_mask}
        if "token_type_ids" in inputs:
            types = padded.token_type_ids
            feed["token_type_ids"] = types if types is not None else np.zeros_like(padded.input_ids)
        result.append(feed)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--docs", type=int, default=300)
    args = parser.parse_args()
    spec = resolve_model(str(TRAINED_CE))
    onnx_path = str(ensure_onnx(spec, "fp32", Settings().cache_dir))
    hint = "bf16" if this_cpu().bf16 else "f32"
    tokenizer = Tokenizer(spec)
    query = tokenizer.tokens([QUERY])[0]
    config = json.loads((spec.path / "config.json").read_text(encoding="utf-8"))
    hidden, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    peaks = gemm_peaks(Budget(seconds=3.0, min_runs=2, max_runs=50))

    # 1. Per layer type over one request.
    profiled = Compiled(onnx_path, hint, PERF_COUNT=True)
    inputs = profiled.inputs
    encoded = tokenizer.encode_pairs(query, documents(spec, args.docs, seed=31))
    batch_feeds = feeds(tokenizer, pack_batches(encoded, BATCH_TOKENS, 512), inputs)
    profiled.timed(batch_feeds)
    seconds: Counter[str] = Counter()
    for feed in batch_feeds:
        profiled.request.infer(feed)
        for layer in profiled.request.profiling_info:
            seconds["attention (fused)" if layer.node_type == "Subgraph" else layer.node_type] += (
                layer.real_time.total_seconds()
            )
    total = sum(seconds.values())
    tokens = sum(int(feed["attention_mask"].sum()) for feed in batch_feeds)
    linear_flops = 2.0 * layers * (4 * hidden * hidden + 2 * hidden * inner) * tokens
    layer_rows = [{"layer": name, "seconds": value, "share": value / total} for name, value in seconds.most_common(8)]
    peak = peaks["bf16" if hint == "bf16" else "fp32"]
    # Per-layer counters add their own overhead: the wall time of an unprofiled pass, split by the counters' shares.
    wall = Compiled(onnx_path, hint).timed(batch_feeds * 2) / 2  # one batch at a time, as profiled
    fc_rate = linear_flops / (wall * seconds["FullyConnected"] / total) / 1e9

    # 2. Options, interleaved over new documents every round; and a small request alone (latency).
    cores = available_cores()
    backend = f"backend settings: {cores} streams of 1 thread, batches side by side"
    variants: dict[str, tuple[Compiled, int]] = {
        backend: (Compiled(onnx_path, hint, streams=cores), BATCH_TOKENS),
        f"1 stream of {cores} threads, batches in turn": (Compiled(onnx_path, hint), BATCH_TOKENS),
        "fused attention off": (Compiled(onnx_path, hint, streams=cores, SNIPPETS_MODE="DISABLE"), BATCH_TOKENS),
        "8,192-token batches": (Compiled(onnx_path, hint, streams=cores), 8192),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    small: dict[str, list[float]] = {name: [] for name in list(variants)[:2]}
    corpus = documents(spec, (args.docs + SMALL_DOCS) * args.rounds, seed=32)
    for round_ in range(args.rounds):
        texts = corpus[round_ * (args.docs + SMALL_DOCS) : (round_ + 1) * (args.docs + SMALL_DOCS)]
        encoded = tokenizer.encode_pairs(query, texts[: args.docs])
        for name, (compiled, budget) in variants.items():
            times[name].append(compiled.timed(feeds(tokenizer, pack_batches(encoded, budget, 512), inputs)))
        alone = feeds(
            tokenizer, pack_batches(tokenizer.encode_pairs(query, texts[args.docs :]), BATCH_TOKENS, 512), inputs
        )
        for name in small:
            small[name].append(variants[name][0].timed(alone))
    base = statistics.median(times[backend])
    option_rows = [
        {"option": name, "median_s": statistics.median(value), "vs_backend": base / statistics.median(value)}
        for name, value in times.items()
    ]
    small_base = statistics.median(small[backend])
    option_rows += [
        {"option": f"{SMALL_DOCS} documents alone, {name.split(':')[0]}", "median_s": statistics.median(value),
         "vs_backend": small_base / statistics.median(value)}
        for name, value in small.items()
    ]  # fmt: skip

    # 3. One static shape against the dynamic model on that shape.
    dynamic = Compiled(onnx_path, hint)
    shape_rows = []
    for rows, width in [(16, 128), (8, 256), (32, 64)]:
        static = Compiled(onnx_path, hint, shape=[rows, width])
        feed = {name: np.ones((rows, width), dtype=np.int64) for name in inputs}
        best = {}
        for label, compiled in (("dynamic", dynamic), ("static", static)):
            compiled.timed([feed])
            best[label] = min(compiled.timed([feed] * 10) / 10 for _ in range(3))
        speedup = best["dynamic"] / best["static"]
        shape_rows.append({"shape": f"{rows}x{width}", "dynamic_ms": best["dynamic"] * 1000,
                           "static_ms": best["static"] * 1000, "static_speedup": speedup})  # fmt: skip

    checks = [  # what the docs conclude from this run: no option tried beats the backend's settings on a request
        check(f"{row['option']} vs the backend's settings (speed ratio)", row["vs_backend"], "<=", 1.0)
        for row in option_rows[1 : len(variants)]
    ]
    record = machine()
    print(f"\n{cpu_line(record)}; OpenVINO {hint}; {args.docs} documents")
    print(format_table(layer_rows, list(layer_rows[0])))
    print(f"request {wall:.2f} s; fully connected {fc_rate:.0f} GFLOP/s, {fc_rate / peak:.0%} of the {hint} GEMM peak "
          f"({peak:.0f} G/s, torch, this run)")  # fmt: skip
    print(format_table(option_rows, list(option_rows[0])))
    print(format_table(shape_rows, list(shape_rows[0])))
    print(format_table(checks, list(checks[0])))
    save("openvino_profile", {
        "hint": hint, "docs": args.docs, "rounds": args.rounds, "peaks_gflops": peaks, "layers": layer_rows,
        "request_seconds": wall, "fully_connected_gflops": fc_rate, "fully_connected_peak_fraction": fc_rate / peak,
        "options": option_rows, "times": times, "static_shapes": shape_rows, "checks": checks,
    })  # fmt: skip
    plot(layer_rows, option_rows, cpu_line(record))


def plot(layer_rows: list[dict[str, Any]], option_rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.barh([row["layer"] for row in layer_rows], [row["share"] for row in layer_rows], color="steelblue")
    left.set_xlabel("share of a 300-document request")
    right.barh([row["option"] for row in option_rows], [row["vs_backend"] for row in option_rows], color="gray")
    right.set_xlabel("speed vs the backend's settings (new documents each round)")
    figure.suptitle(title, fontsize=7)
    figure.tight_layout()
    figure.savefig(plot_path("openvino_profile"), dpi=120)


if __name__ == "__main__":
    main()
