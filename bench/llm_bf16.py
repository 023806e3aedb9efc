"""LLM rerankers in bf16 on a CPU with bf16 arithmetic: speed and fidelity against fp32, in one run.

The Qwen3-Reranker-0.6B shape (bench/llm_throughput.py: its width, random weights, cut to `--layers` decoder layers)
scores the same Debian descriptions through rerankd's torch backend at fp32 and at bf16 (shared-prefix reuse on in
both), interleaved round by round; fidelity is the Spearman correlation of the yes/no logit difference with fp32's
over those documents, and over each golden LLM fixture of tests/test_golden_llm.py (Qwen3, Qwen2, Gemma shapes).

Targets (printed and applied): bf16 >= 1.6x fp32 docs/s, Spearman >= 0.99 vs fp32. On a CPU without bf16 the run
stops: bf16 would be emulated there, and rerankd refuses it.

    .venv/bin/python bench/llm_bf16.py [--layers 4] [--documents 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import numpy as np
from common import check, cpu_line, format_table, machine, plot_path, save, spearman
from llm_throughput import build_qwen3_shape, documents

from rerankd.config import Settings
from rerankd.cpu import this_cpu
from rerankd.engine.engine import Engine
from rerankd.models import ModelSpec, resolve_model

QUERY = "a library to embed an SQL database in C programs"
SPEEDUP_TARGET = 1.6
SPEARMAN_TARGET = 0.99


def engine(spec: ModelSpec, precision: str) -> Engine:
    settings = Settings(backend="torch", device="cpu", precision=precision, warmup_seconds=0, score_cache_mb=0)
    return Engine.load(spec, settings)


def scores_and_seconds(model: Engine, docs: list[str]) -> tuple[np.ndarray, float]:
    async def run() -> np.ndarray:
        return await model.score(await model.prepare(QUERY, docs), raw=True)

    started = time.perf_counter()
    scores = asyncio.run(run())
    return scores, time.perf_counter() - started


def measure_shape(layers: int, count: int, rounds: int) -> dict[str, Any]:
    spec = resolve_model(str(build_qwen3_shape(layers)))
    docs = documents(spec, count)
    engines = {precision: engine(spec, precision) for precision in ("fp32", "bf16")}
    times: dict[str, list[float]] = {precision: [] for precision in engines}
    scores: dict[str, np.ndarray] = {}
    try:
        for model in engines.values():
            scores_and_seconds(model, docs[:4])  # untimed: first-call costs
        for _ in range(rounds):
            for precision, model in engines.items():
                scores[precision], seconds = scores_and_seconds(model, docs)
                times[precision].append(seconds)
    finally:
        for model in engines.values():
            model.close()
    best = {precision: min(values) for precision, values in times.items()}
    return {
        "model": f"Qwen3-0.6B shape, {layers} layers",
        "documents": count,
        "fp32_docs_per_s": count / best["fp32"],
        "bf16_docs_per_s": count / best["bf16"],
        "speedup": best["fp32"] / best["bf16"],
        "spearman": spearman(scores["fp32"], scores["bf16"]),
        "max_abs_diff": float(np.abs(scores["fp32"] - scores["bf16"]).max()),
        "rounds": rounds,
    }


def measure_fixtures() -> list[dict[str, Any]]:
    """Fidelity only: the golden fixtures are tiny (their speed says nothing)."""
    from test_golden_llm import DOCUMENTS, build_tiny_llm

    rows = []
    for family in ("qwen3", "qwen2", "gemma"):
        spec = resolve_model(str(build_tiny_llm(family)))
        found = {}
        for precision in ("fp32", "bf16"):
            model = engine(spec, precision)
            try:
                found[precision], _ = scores_and_seconds(model, DOCUMENTS)
            finally:
                model.close()
        rows.append(
            {
                "model": f"golden {family} fixture",
                "documents": len(DOCUMENTS),
                "spearman": spearman(found["fp32"], found["bf16"]),
                "max_abs_diff": float(np.abs(found["fp32"] - found["bf16"]).max()),
            }
        )
    return rows


def plot(rows: list[dict[str, Any]], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    labels = [row["model"] for row in rows]
    axis.barh(labels, [row["spearman"] for row in rows], color="steelblue")
    axis.axvline(SPEARMAN_TARGET, color="grey", linestyle="--", label=f"target {SPEARMAN_TARGET}")
    axis.set_xlim(min(0.95, *(row["spearman"] for row in rows)) - 0.01, 1.0)
    axis.set_xlabel("Spearman of bf16 vs fp32 (yes/no logit)")
    speed = next(row for row in rows if "speedup" in row)
    axis.set_title(f"LLM reranker bf16: {speed['speedup']:.2f}x fp32 docs/s; {machine()['cpu']['model']}", fontsize=9)
    axis.legend()
    figure.tight_layout()
    figure.savefig(plot_path(name), dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the Qwen3-0.6B shape")
    parser.add_argument("--documents", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="llm_bf16")
    args = parser.parse_args()
    if not this_cpu().bf16:
        raise SystemExit(f"{this_cpu().model} has no bf16 arithmetic (avx512_bf16 / amx_bf16): nothing to measure")
    shape = measure_shape(args.layers, args.documents, args.rounds)
    rows = [shape, *measure_fixtures()]
    checks = [
        check("bf16 speed vs fp32 (Qwen3 shape)", shape["speedup"], ">=", SPEEDUP_TARGET),
        *(check(f"Spearman vs fp32 ({row['model']})", row["spearman"], ">=", SPEARMAN_TARGET) for row in rows),
    ]
    record = machine()
    print(f"\n{cpu_line(record)}\n")
    columns = ["model", "documents", "fp32_docs_per_s", "bf16_docs_per_s", "speedup", "spearman", "max_abs_diff"]
    print(format_table(rows, columns))
    print("\n" + format_table(checks, ["check", "measured", "limit", "ok"]))
    path = save(args.name, {"rows": rows, "checks": checks, "layers": args.layers})
    plot(rows, args.name)
    print(f"saved {path} and {plot_path(args.name)}")


if __name__ == "__main__":
    main()
