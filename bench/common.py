"""What every benchmark shares: where results go, the printed table, the JSON record and machine facts."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

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

__all__ = ["DEBIAN_DATA", "RESULTS", "TRAINED_CE", "format_table", "machine", "percentile", "plot_path", "save"]


def save(name: str, payload: dict[str, Any]) -> Path:
    """Write `bench/results/<name>.json` with the machine facts added; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=float))
    return path


def plot_path(name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / f"{name}.png"
