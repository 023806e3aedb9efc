"""The CPU engines side by side, in process, per CPU class: the speed table `auto` decides from (backends/fidelity.py).

A request of `--docs` Debian documents (20-300 tokens; new documents each round, as a server sees) for the trained
cross-encoder, scored by sentence-transformers fp32 (the baseline) and each engine, interleaved round by round;
docs/s, the ratio to the baseline, and rank agreement with it.

`--isa avx2|avx512_core_vnni` measures a smaller CPU on this one: oneDNN (OpenVINO's and torch's kernels) and MKL are
capped to that instruction set before anything loads. ONNX Runtime cannot be capped (its kernels pick by CPUID), so
its rows are left out of a capped run, which says so. bf16 engines are left out below AVX-512 BF16.

    .venv/bin/python bench/cpu_engines.py [--docs 300] [--rounds 3] [--isa avx2]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

# The caps must be set before oneDNN, MKL or torch load.
_ISA_ENV = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "avx512_core_vnni": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI", "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
}
if "--isa" in sys.argv:
    os.environ.update(_ISA_ENV[sys.argv[sys.argv.index("--isa") + 1]])

from common import TRAINED_CE, cpu_line, format_table, machine, plot_path, save  # noqa: E402
from throughput import REFERENCE, Baseline, Budget, InProcess, documents, measure  # noqa: E402

from rerankd.cpu import Cpu, this_cpu  # noqa: E402
from rerankd.models import resolve_model  # noqa: E402

ENGINES = {
    "onnx-fp32": ("onnx", "fp32"),
    "onnx-int8": ("onnx", "int8"),
    "openvino-fp32": ("openvino", "fp32"),
    "openvino-bf16": ("openvino", "bf16"),
    "openvino-int8": ("openvino", "int8"),
}


def engines_for(isa: str | None) -> dict[str, tuple[str, str]]:
    chosen = dict(ENGINES)
    if isa is not None:
        chosen = {name: engine for name, engine in chosen.items() if engine[0] != "onnx"}
    if isa is not None or not this_cpu().bf16:
        chosen.pop("openvino-bf16")
    return chosen


def plot(rows: list[dict[str, Any]], name: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.barh([row["system"] for row in rows], [row["vs_st"] for row in rows], color="steelblue")
    axis.set_xlabel("docs/s vs sentence-transformers fp32 (same run)")
    axis.set_title(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(plot_path(name), dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--isa", choices=list(_ISA_ENV), help="cap oneDNN/MKL to this instruction set")
    parser.add_argument("--name", help="results file name (default cpu_engines[-ISA])")
    args = parser.parse_args()
    if args.isa is not None:  # the engines must see the capped CPU's flags too (an int8 graph's float precision)
        import rerankd.backends.load

        flags = {"avx2": {"avx2", "fma"}, "avx512_core_vnni": {"avx2", "fma", "avx512f", "avx512_vnni"}}[args.isa]
        capped_cpu = Cpu(f"{this_cpu().model} capped to {args.isa}", frozenset(flags))
        rerankd.backends.load.this_cpu = lambda: capped_cpu
    spec = resolve_model(str(TRAINED_CE))
    corpus = documents(spec, args.docs * args.rounds)
    requests = [corpus[i * args.docs : (i + 1) * args.docs] for i in range(args.rounds)]  # new documents each round
    runners: dict[str, Any] = {REFERENCE: Baseline(spec)}
    for name, (backend, precision) in engines_for(args.isa).items():
        runners[f"{name}/in-process"] = InProcess(spec, backend, precision)
    try:
        results = measure(runners, requests, Budget(seconds=0, min_runs=args.rounds, max_runs=args.rounds), REFERENCE)
    finally:
        for runner in runners.values():
            runner.close()
    baseline = results[REFERENCE]["docs_per_s"]
    rows = [
        {"system": key.split("/")[0], "engine": runners[key].engine, **result, "vs_st": result["docs_per_s"] / baseline}
        for key, result in results.items()
    ]
    rows.sort(key=lambda row: -row["docs_per_s"])
    record = machine()
    capped = f"capped to {args.isa} (ONNX Runtime left out: it cannot be capped)" if args.isa else "uncapped"
    title = f"{cpu_line(record)}; {capped}; {args.docs} documents"
    print(f"\n{title}\n" + format_table(rows, ["system", "engine", "docs_per_s", "vs_st", "spearman", "top10_overlap"]))
    name = args.name or ("cpu_engines" + (f"-{args.isa}" if args.isa else ""))
    path = save(name, {"docs": args.docs, "isa_cap": args.isa, "env": {k: os.environ.get(k) for k in
                                                                       _ISA_ENV["avx2"]}, "rows": rows})  # fmt: skip
    plot(rows, name, title)
    print(f"saved {path} and {plot_path(name)}")


if __name__ == "__main__":
    main()
