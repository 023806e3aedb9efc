"""What benchmarks and `eval` print and record: a plain-text table, percentiles, and the machine they ran on."""

from __future__ import annotations

import platform
import subprocess
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from rerankd.cores import available_cores
from rerankd.cpu import this_cpu


def cpu() -> dict[str, Any]:
    """The CPU model and its relevant flags (Linux); the architecture elsewhere."""
    probe = this_cpu()
    return {"model": probe.model, "flags": probe.recorded_flags}


def commit() -> str:
    """The checked-out commit (with `+dirty` when files differ from it), so a result names the code that made it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu(),
        "cores": available_cores(),
        "python": platform.python_version(),
        "commit": commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    cells = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)
