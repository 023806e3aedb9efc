"""Where an exported LLM reranker spends its CPU time, and what the export and session options change.

The model is bench/llm_throughput.py's Qwen3-Reranker-0.6B shape (random weights) cut to `--layers` layers (same
width, heads and MLP), exported by rerankd's own export path under several recipes (`rerankd.backends.export.
LmRecipe`); inputs are the batches rerankd's scheduler forms (`pack_batches`, default token budget) from 100
Debian descriptions cut to Qwen's token rate (by default the median one; `--batches` picks others).

For each variant:
  - onnxruntime's profiler (`SessionOptions.enable_profiling`): kernel time per op type, and the FLOPs and time of
    the matrix products (MatMul / FusedMatMul / Gemm, FLOPs from the shapes the profiler records);
  - speed in interleaved rounds (best round counts), as a share of the fp32 GEMM peak measured in the same run
    (numpy, as bench/llm_throughput.py; and onnxruntime's own MatMul on the model's projection shapes), with useful
    FLOPs counted as bench/llm_throughput.py does (unpadded lengths);
  - the largest score difference from the baseline on the same batches.

    .venv/bin/python bench/llm_profile.py [--layers 4] [--rounds 5] [--variants baseline,causal-mask,...]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from common import format_table, plot_path, save
from llm_throughput import build_qwen3_shape, documents, forward_flops, fp32_peak
from throughput import QUERY

from rerankd.backends.base import Batch
from rerankd.backends.export import LM_RECIPE, LmRecipe, export_fp32
from rerankd.backends.onnx import session_options
from rerankd.cachedir import build_once
from rerankd.config import Settings, default_cache_dir
from rerankd.cores import available_cores
from rerankd.engine.scheduler import pack_batches
from rerankd.engine.tokenize import Encoded, Tokenizer
from rerankd.models import ModelSpec, resolve_model

GEMM_OPS = {"MatMul", "FusedMatMul", "Gemm"}


@dataclass(frozen=True)
class Variant:
    """One export recipe and the session settings it runs with."""

    recipe: LmRecipe
    spinning: bool = False
    threads: int = 0  # 0: the cores this process may use (as the server)


VARIANTS = {
    "baseline": Variant(LmRecipe()),
    "spinning": Variant(LmRecipe(), spinning=True),
    "causal-mask": Variant(LmRecipe(padding_mask=False)),
    "sdpa": Variant(LmRecipe(attention="sdpa", padding_mask=False)),
    "fused": Variant(LmRecipe(padding_mask=False, fusions=True)),
    "sdpa-fused": Variant(LmRecipe(attention="sdpa", padding_mask=False, fusions=True)),
    "adopted": Variant(LM_RECIPE),
}


def export(spec: ModelSpec, recipe: LmRecipe) -> Path:
    """The model exported under `recipe`, built once into the cache (the export check runs as in the server)."""
    name = "-".join(f"{key}={value}" for key, value in asdict(recipe).items())
    folder = default_cache_dir() / "bench-llm-profile" / f"{spec.short_name}-{spec.revision}-{name}"

    def build(staging: Path) -> None:
        facts = export_fp32(spec, staging / "model.onnx", recipe)
        (staging / "export.json").write_text(json.dumps(facts, indent=2))

    return build_once(folder, build, done="model.onnx") / "model.onnx"


def session(path: Path, variant: Variant, profile_prefix: str | None = None) -> onnxruntime.InferenceSession:
    options = session_options(variant.threads or available_cores())
    if variant.spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess: onnxruntime.InferenceSession, batch: Batch) -> np.ndarray:
    return sess.run(None, {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})[0]


# -- the profile --------------------------------------------------------------------------------------------------


def gemm_flops(args: dict[str, Any]) -> float:
    """2 x output elements x the shared dimension; the shared dimension from the first input's size, which holds
    whatever its transposition (the activations are never broadcast here)."""
    first = next(iter(args["input_type_shape"][0].values()))
    out = next(iter(args["output_type_shape"][0].values()))
    outputs = float(np.prod(out))
    return 2.0 * outputs * float(np.prod(first)) * out[-1] / outputs


def profile(path: Path, variant: Variant, batches: list[Batch], work: Path) -> dict[str, Any]:
    """Kernel seconds per op type and the matrix products' FLOPs over one pass on `batches`, after an untimed run
    (first-call costs: buffer planning, prepacking)."""
    sess = session(path, variant, profile_prefix=str(work / "ort"))
    run(sess, batches[0])
    for batch in batches:
        run(sess, batch)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    seconds: dict[str, float] = defaultdict(float)
    flops = {"weights": 0.0, "attention": 0.0}
    gemm_seconds = {"weights": 0.0, "attention": 0.0}
    runs = sorted((e for e in events if e.get("cat") == "Session" and e["name"] == "model_run"), key=lambda e: e["ts"])
    warmed = runs[0]["ts"] + runs[0]["dur"]
    counted = 0
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time") or event["ts"] < warmed:
            continue
        counted += 1
        op = event["args"]["op_name"]
        seconds[op] += event["dur"] / 1e6
        if op in GEMM_OPS:
            shapes = [next(iter(shape.values())) for shape in event["args"]["input_type_shape"]]
            kind = "weights" if len(shapes) == 1 or len(shapes[1]) == 2 else "attention"  # prepacked weights: unlisted
            flops[kind] += gemm_flops(event["args"])
            gemm_seconds[kind] += event["dur"] / 1e6
    total = sum(seconds.values())
    return {
        "kernel_seconds": total,
        "nodes": counted,
        "op_seconds": dict(sorted(seconds.items(), key=lambda item: -item[1])),
        "gemm_flops": flops,
        "gemm_seconds": gemm_seconds,
    }


# -- timing -------------------------------------------------------------------------------------------------------


def timed(sessions: dict[str, onnxruntime.InferenceSession], batches: list[Batch], rounds: int) -> dict[str, list]:
    """Seconds per pass over `batches`, variant after variant within each round (a busy neighbour slows all)."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            started = time.perf_counter()
            for batch in batches:
                run(sess, batch)
            times[name].append(time.perf_counter() - started)
    return times


def ort_matmul_peak(tokens: int, config: dict[str, Any], seconds: float = 3.0) -> float:
    """onnxruntime's own fp32 MatMul (constant weights, as in the model) on the model's projection shapes at this
    batch's token count, GFLOP/s: the ceiling the graph's weight products can reach here."""
    from onnx import TensorProto, helper, numpy_helper

    hidden, inner = config["hidden_size"], config["intermediate_size"]
    q_width = config["num_attention_heads"] * config["head_dim"]
    rng = np.random.default_rng(0)
    best = 0.0
    for k, n in [(hidden, q_width), (hidden, inner), (inner, hidden)]:
        weights = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "B")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["A", "B"], ["Y"])],
            "fp32_gemm",
            [helper.make_tensor_value_info("A", TensorProto.FLOAT, [tokens, k])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [tokens, n])],
            [weights],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        options = session_options(available_cores())
        sess = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds = {"A": rng.standard_normal((tokens, k), dtype=np.float32)}
        sess.run(None, feeds)
        deadline = time.perf_counter() + seconds / 3
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            sess.run(None, feeds)
            best = max(best, 2.0 * tokens * k * n / (time.perf_counter() - started))
    return best / 1e9


# -- main ---------------------------------------------------------------------------------------------------------


def pick_batches(spec: ModelSpec, count: int, quantiles: list[float]) -> tuple[list[Batch], list[int]]:
    """The scheduler's batches over `count` documents (default budget), those at these quantiles of length."""
    tokenizer = Tokenizer(spec)
    encoded: list[Encoded] = tokenizer.encode_prompts(QUERY, documents(spec, count), None)
    settings = Settings()
    planned = pack_batches(encoded, settings.max_batch_tokens, settings.max_batch_size)
    chosen = [planned[int(q * (len(planned) - 1))] for q in quantiles]
    return [tokenizer.collate(items) for items in chosen], [len(item) for items in chosen for item in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (default 4; the real model has 28)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--name", default="llm_profile", help="results file name")
    parser.add_argument("--batches", default="0.5", help="quantiles of the batches to run (default 0.5: the median)")
    args = parser.parse_args()
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}")
    started = time.perf_counter()

    spec = resolve_model(str(build_qwen3_shape(args.layers)))
    config = json.loads((spec.path / "config.json").read_text())
    batches, lengths = pick_batches(spec, 100, [float(q) for q in args.batches.split(",")])
    padded = sum(batch.padded_tokens for batch in batches)
    print(f"{args.layers} layers; batches {[b.input_ids.shape for b in batches]}: {sum(lengths)} real tokens, "
          f"{padded} padded", flush=True)  # fmt: skip
    paths = {}
    for name in names:
        exported = time.perf_counter()
        paths[name] = export(spec, VARIANTS[name].recipe)
        print(f"{name}: {paths[name].parent.name} ({time.perf_counter() - exported:.0f} s)", flush=True)

    work = default_cache_dir() / "bench-llm-profile" / "traces"
    work.mkdir(parents=True, exist_ok=True)
    profiles = {}
    for name in names:
        profiles[name] = profile(paths[name], VARIANTS[name], batches, work)
        print(f"profiled {name}", flush=True)
    shares_table = _shares(profiles)
    print("\nkernel time share per op type:\n" + format_table(shares_table, list(shares_table[0])), flush=True)
    for name, shares in profiles.items():
        gemm = sum(shares["gemm_seconds"].values())
        print(f"{name}: matrix products {100 * gemm / shares['kernel_seconds']:.1f}% of kernel time, "
              f"{sum(shares['gemm_flops'].values()) / gemm / 1e9:.0f} GFLOP/s while running", flush=True)  # fmt: skip
    facts = {"layers": args.layers, "batches": [list(b.input_ids.shape) for b in batches], "profiles": profiles}
    save(args.name, {**facts, "op_shares": shares_table, "partial": "profiles only: the timing phase did not end"})

    peaks = [fp32_peak()]
    ort_peak = ort_matmul_peak(int(np.median([b.padded_tokens for b in batches])), config)
    print(f"onnxruntime MatMul peak on the projection shapes: {ort_peak:.0f} GFLOP/s", flush=True)
    sessions = {name: session(paths[name], VARIANTS[name]) for name in names}
    scores = {name: np.concatenate([run(sess, batch) for batch in batches]) for name, sess in sessions.items()}
    times = timed(sessions, batches, args.rounds)
    del sessions
    peaks.append(fp32_peak())
    peak = max(peaks)
    useful = forward_flops(spec, lengths)

    rows = []
    base = names[0]
    for name in names:
        best = min(times[name])
        shares = profiles[name]
        gemm_s = sum(shares["gemm_seconds"].values())
        gemm_f = sum(shares["gemm_flops"].values())
        rows.append({
            "variant": name,
            "best_s": best,
            "median_s": float(np.median(times[name])),
            "vs_" + base: min(times[base]) / best,
            "peak_fraction": useful / best / 1e9 / peak,
            "gemm_share": gemm_s / shares["kernel_seconds"],
            "gemm_peak_fraction": gemm_f / gemm_s / 1e9 / peak,
            "weights_gemm_peak_fraction": shares["gemm_flops"]["weights"] / shares["gemm_seconds"]["weights"] / 1e9
            / peak,
            "executed_vs_useful_flops": gemm_f / useful,
            "nodes_per_pass": shares["nodes"] / len(batches),
            "max_abs_diff_vs_" + base: float(np.abs(scores[name] - scores[base]).max()),
        })  # fmt: skip
    print("\n" + format_table(rows, list(rows[0])))
    seconds = time.perf_counter() - started
    print(f"\nfp32 peak: numpy {peak:.0f} GFLOP/s, onnxruntime MatMul {ort_peak:.0f}; whole run {seconds:.0f} s")
    payload = {
        "model": {"shape": "Qwen3-Reranker-0.6B width, random weights", "layers": args.layers},
        "batches": [list(b.input_ids.shape) for b in batches],
        "real_tokens": sum(lengths),
        "padded_tokens": padded,
        "useful_gflop": useful / 1e9,
        "peaks_gflops": {"fp32_seen": peaks, "fp32": peak, "onnxruntime_matmul": ort_peak},
        "variants": {name: {**asdict(VARIANTS[name]), "export": paths[name].parent.name} for name in names},
        "rows": rows,
        "times": times,
        "profiles": profiles,
        "op_shares": shares_table,
        "note": "random weights; other work may share these cores: compare ratios within this run",
        "seconds": seconds,
    }
    path = save(args.name, payload)
    plot(profiles, plot_path(args.name))
    print(f"saved {path} and {plot_path(args.name)}")


def _shares(profiles: dict[str, dict[str, Any]], top: int = 12) -> list[dict[str, Any]]:
    """One row per op type (the `top` slowest overall, the rest as "other"), per variant: % of kernel time."""
    overall: dict[str, float] = defaultdict(float)
    for shares in profiles.values():
        for op, seconds in shares["op_seconds"].items():
            overall[op] += seconds / shares["kernel_seconds"]
    ops = sorted(overall, key=lambda op: -overall[op])[:top]
    rows = []
    for op in [*ops, "other"]:
        row: dict[str, Any] = {"op": op}
        for name, shares in profiles.items():
            got = shares["op_seconds"]
            value = sum(s for o, s in got.items() if o not in ops) if op == "other" else got.get(op, 0.0)
            row[name] = f"{100 * value / shares['kernel_seconds']:.1f}%"
        rows.append(row)
    return rows


def plot(profiles: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = [row["op"] for row in _shares(profiles, top=8)]
    figure, axis = plt.subplots(figsize=(9, 4.5))
    names = list(profiles)
    left = np.zeros(len(names))
    for op in ops:
        values = []
        for name in names:
            got = profiles[name]["op_seconds"]
            value = sum(s for o, s in got.items() if o not in ops) if op == "other" else got.get(op, 0.0)
            values.append(value)
        axis.barh(names, values, left=left, label=op)
        left += np.array(values)
    axis.set_xlabel("kernel seconds per pass over the batches")
    axis.set_title("Exported Qwen3-shape reranker on the CPU: time per op type (onnxruntime profiler)")
    axis.invert_yaxis()
    axis.legend(fontsize=7, ncol=3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
