"""Why OpenVINO's batches are padded to a multiple of 16 tokens (`OpenVinoBackend.width_multiple`).

OpenVINO's CPU plugin prepares kernels per input shape. A server sees new documents in every request, so batches at
their own lengths are shapes it has rarely seen; padded to a multiple of 16, the same few widths recur. Each round is
a request of new Debian documents (20-300 tokens) for the trained cross-encoder, cut into the engine's length-sorted
2,048-token batches and run through rerankd's OpenVINO backend at widths padded to a multiple of 1 (the longest
input's own) and of 16, interleaved round by round; each precision is a separately compiled model with its own
kernel cache. Padding is masked, so the scores at both widths may differ only by the reduced precision's rounding in
differently blocked kernels: no more than that precision's own distance from fp32 (an fp32 model on the same batches).

    .venv/bin/python bench/openvino_shapes.py [--rounds 8] [--docs 300]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

import numpy as np
from common import TRAINED_CE, check, cpu_line, format_table, machine, plot_path, save
from throughput import QUERY, documents

from rerankd.backends.load import load_backend
from rerankd.config import Settings
from rerankd.cpu import this_cpu
from rerankd.engine.scheduler import pack_batches
from rerankd.engine.tokenize import Tokenizer
from rerankd.models import resolve_model

MULTIPLES = (1, 16)
SPEEDUP_MIN = {"int8": 1.1, "bf16": 0.95, "fp32": 0.95}
BATCH_TOKENS = 2048


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--docs", type=int, default=300)
    args = parser.parse_args()
    spec = resolve_model(str(TRAINED_CE))
    tokenizer = Tokenizer(spec)
    precisions = ["int8", "bf16"] if this_cpu().bf16 else ["int8", "fp32"]
    # One compiled model per (precision, multiple): no run warms the kernel cache of another.
    backends = {
        (precision, multiple): load_backend(spec, Settings(backend="openvino", precision=precision, device="cpu"))
        for precision in precisions
        for multiple in MULTIPLES
    }
    query = tokenizer.tokens([QUERY])[0]
    corpus = documents(spec, args.docs * args.rounds, seed=21)
    exact = load_backend(spec, Settings(backend="openvino", precision="fp32", device="cpu"))
    times: dict[tuple[str, int], list[float]] = {key: [] for key in backends}
    largest_difference = {precision: 0.0 for precision in precisions}
    own_error = {precision: 0.0 for precision in precisions}
    order = list(backends)
    for round_ in range(args.rounds):
        texts = corpus[round_ * args.docs : (round_ + 1) * args.docs]
        encoded = tokenizer.encode_pairs(query, texts)
        batches = pack_batches(encoded, BATCH_TOKENS, max_batch_size=512)
        random.Random(round_).shuffle(order)
        scores: dict[tuple[str, int], np.ndarray] = {}
        for key in order:
            backend = backends[key]
            started = time.perf_counter()
            scores[key] = np.concatenate([backend.forward(tokenizer.collate(batch, key[1])) for batch in batches])
            times[key].append(time.perf_counter() - started)
        reference = np.concatenate([exact.forward(tokenizer.collate(batch)) for batch in batches])
        for precision in precisions:
            difference = float(np.abs(scores[(precision, 1)] - scores[(precision, 16)]).max())
            largest_difference[precision] = max(largest_difference[precision], difference)
            error = float(np.abs(scores[(precision, 1)] - reference).max())
            own_error[precision] = max(own_error[precision], error)
        print(f"round {round_}: " + ", ".join(f"{p}/{m} {times[(p, m)][-1]:.2f} s" for p, m in backends), flush=True)
    rows: list[dict[str, Any]] = []
    for (precision, multiple), seconds in times.items():
        median = statistics.median(seconds)
        unpadded = statistics.median(times[(precision, 1)])
        rows.append({
            "precision": precision, "width_multiple": multiple, "median_s": median, "docs_per_s": args.docs / median,
            "vs_unpadded": unpadded / median, "max_vs_unpadded": largest_difference[precision],
            "max_vs_fp32": own_error[precision],
        })  # fmt: skip
    speedup = {row["precision"]: row["vs_unpadded"] for row in rows if row["width_multiple"] == 16}
    checks = [
        # The reason to pad: int8 gains; elsewhere padding must at least cost nothing beyond this machine's noise.
        check(f"{precision}: padded to 16 vs own widths (speed ratio, median)", ratio, ">=", SPEEDUP_MIN[precision])
        for precision, ratio in speedup.items()
    ] + [
        check(f"{precision}: padded vs not, largest difference / distance from fp32", d / own_error[precision], "<=", 1)
        for precision, d in largest_difference.items()
    ]  # fmt: skip
    record = machine()
    print(f"\n{cpu_line(record)}; {args.docs} new documents per round, {args.rounds} rounds")
    print(format_table(rows, list(rows[0])))
    print(format_table(checks, list(checks[0])))
    save("openvino_shapes", {"docs": args.docs, "rounds": args.rounds, "batch_tokens": BATCH_TOKENS, "rows": rows,
                             "times": {f"{p}/{m}": t for (p, m), t in times.items()}, "checks": checks})  # fmt: skip
    plot(rows, cpu_line(record))


def plot(rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.5))
    labels = [f"{row['precision']}, multiple of {row['width_multiple']}" for row in rows]
    axis.barh(labels, [row["docs_per_s"] for row in rows], color="steelblue")
    axis.set_xlabel("docs/s, new documents every request (median of rounds)")
    axis.set_title(title, fontsize=7)
    figure.tight_layout()
    figure.savefig(plot_path("openvino_shapes"), dpi=120)


if __name__ == "__main__":
    main()
