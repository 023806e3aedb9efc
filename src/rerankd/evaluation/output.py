"""What `eval` leaves behind: a table per depth on stdout, a JSON record, the accuracy/latency frontier, and a
reliability diagram of the rows whose scores are probabilities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rerankd.reporting import format_table, machine

COLUMNS = (
    "strategy",
    "ndcg@10",
    "mrr@10",
    "recall@10",
    "recall@100",
    "ece",
    "precision@t0.8",
    "p50_ms",
    "docs_per_s",
    "timed_queries",
)


def _cells(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the table shows it: no ECE where scores are not probabilities, and the precision at the threshold
    the calibration chose for 0.8 (with how many pairs it kept)."""
    at = row.get("threshold_precision", {}).get("0.8")
    precision = "" if not at or at["precision"] is None else f"{at['precision']:.3f} ({at['kept']})"
    return {**row, "ece": "" if row.get("ece") is None else row["ece"], "precision@t0.8": precision}


def tables(result: dict[str, Any]) -> str:
    parts = []
    for depth in result["depths"]:
        fitted = ", ".join(f"{method} {weight:g}" for method, weight in depth["fitted"].items())
        fit_note = f"; fusion weight fitted on {len(depth['fit_queries'])} other queries ({fitted})" if fitted else ""
        parts.append(
            f"{result['model']} on {result['dataset']}: BM25 top {depth['depth']} candidates, "
            f"{len(depth['test_queries'])} test queries{fit_note}\n"
            + format_table([_cells(row) for row in depth["rows"]], COLUMNS)
        )
    return "\n\n".join(parts)


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both latency (lower) and accuracy (higher), by latency."""
    best, kept = float("-inf"), []
    for latency, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            kept.append((latency, accuracy))
            best = accuracy
    return kept


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = result["depths"]
    figure, axes = plt.subplots(1, len(depths), figsize=(11 * len(depths), 6), squeeze=False)
    markers = "osD^v<>Ph*Xdp"
    for axis, depth in zip(axes[0], depths, strict=True):
        rows = [row for row in depth["rows"] if row["p50_ms"] and row["p50_ms"] > 0]
        points = [(row["p50_ms"], row["ndcg@10"]) for row in rows]
        colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(rows), 1)))
        # Strategies that differ only in fusion weight share one timing: a legend keeps them readable.
        for i, (row, (x, y)) in enumerate(zip(rows, points, strict=True)):
            axis.scatter(x, y, s=40, color=colors[i], marker=markers[i % len(markers)], label=row["strategy"])
        edge = frontier(points)
        axis.plot([p[0] for p in edge], [p[1] for p in edge], "k--", linewidth=0.8, label="frontier")
        axis.set_xscale("log")
        axis.set_xlabel("p50 latency per query (ms, log scale)")
        axis.set_ylabel("NDCG@10")
        axis.set_title(f"BM25 top {depth['depth']}, {len(depth['test_queries'])} test queries")
        axis.grid(True, alpha=0.3)
        axis.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    figure.suptitle(f"{Path(result['model']).name} on {Path(result['dataset']).name}: accuracy vs latency")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_reliability(result: dict[str, Any], path: Path) -> bool:
    """Observed relevant share against mean probability per bin, one panel per row with an ECE (the first
    depth); False (no file) when no row has one."""
    rows = [row for row in result["depths"][0]["rows"] if row.get("ece") is not None]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 4.4), squeeze=False)
    for axis, row in zip(axes[0], rows, strict=True):
        bins = row["reliability"]
        axis.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="perfect")
        axis.plot([b["mean_probability"] for b in bins], [b["relevant_share"] for b in bins], "o-", label="observed")
        for b in bins:
            axis.annotate(str(b["count"]), (b["mean_probability"], b["relevant_share"]), fontsize=7, xytext=(3, -9),
                          textcoords="offset points")  # fmt: skip
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("score (mean per bin of 0.1)")
        axis.set_ylabel("relevant share")
        axis.set_title(f"{row['strategy']}\nECE {row['ece']:.3f}", fontsize=9)
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper left", fontsize=8)
    figure.suptitle(f"{Path(result['model']).name}: reliability (pairs per bin annotated)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write(result: dict[str, Any], out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps({"machine": machine(), **result}, indent=2, default=float))
    png_path = out_dir / f"{name}.png"
    plot(result, png_path)
    reliability_path = out_dir / f"{name}-reliability.png"
    return [json_path, png_path, *([reliability_path] if plot_reliability(result, reliability_path) else [])]
