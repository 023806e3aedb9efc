"""What every benchmark shares: where results go, the printed table, the JSON record and machine facts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from rerankd.reporting import format_table, machine, percentile  # shared with `rerankd eval`

# `python bench/x.py` puts only bench/ on sys.path: add the repository root, so that the test tooling (testing/,
# kept out of the installed package) imports as under pytest. Every benchmark imports this module first.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = Path(__file__).resolve().parents[2] / "shared"
DEBIAN_DATA = SHARED / "data" / "debian-descriptions"
TRAINED_CE = SHARED / "models" / "debian-minilm-ce"

__all__ = [
    "DEBIAN_DATA",
    "RESULTS",
    "TRAINED_CE",
    "check",
    "cpu_line",
    "format_table",
    "machine",
    "percentile",
    "plot_path",
    "save",
    "spearman",
    "top_k_overlap",
]


def check(name: str, measured: float, bound: str, limit: float) -> dict[str, Any]:
    """One table row whose `ok` applies exactly the printed limit; NaN (the event never happened) fails."""
    ok = measured <= limit if bound == "<=" else measured >= limit
    return {"check": name, "measured": measured, "limit": f"{bound} {limit:g}", "ok": bool(ok)}


def save(name: str, payload: dict[str, Any]) -> Path:
    """Write `bench/results/<name>.json` with the machine facts added; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=float))
    return path


def plot_path(name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / f"{name}.png"


def cpu_line(record: dict[str, Any]) -> str:
    """`machine()`'s CPU as one printable line: model, the flags that decide the fast kernels, cores."""
    flags = " ".join(record["cpu"]["flags"]) or "none of the tracked flags"
    return f"{record['cpu']['model']} ({flags}), {record['cores']} cores"


def spearman(reference: np.ndarray, scores: np.ndarray) -> float:
    """Rank correlation of two systems' scores for the same documents (1.0: the same order)."""
    return float(spearmanr(reference, scores).statistic)


def top_k_overlap(reference: np.ndarray, scores: np.ndarray, k: int = 10) -> float:
    """Share of the reference's top `k` documents that `scores` also ranks in its top `k`."""
    top = min(k, len(reference))
    return len(set(np.argsort(-reference, kind="stable")[:top]) & set(np.argsort(-scores, kind="stable")[:top])) / top
