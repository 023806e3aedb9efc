"""The import direction docs/architecture.md describes holds: the import-linter contracts in pyproject.toml
(layers, light wire types and ingress, production never importing the test tooling in testing/, no cycles)
all pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_CODE = ("torch", "transformers", "onnxruntime", "bm25s")


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    assert lint_imports.exists(), f"{lint_imports}: install the dev extra (pip install -e '.[dev]')"
    run = subprocess.run(
        [lint_imports, "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_the_fleet_ingress_and_wire_types_load_no_model_code() -> None:
    # What the contract's one ignored import (create_app's in-function LocalService import) leaves to run time.
    code = (
        "import sys, rerankd.pipeline.types, rerankd.fleet.service, rerankd.fleet.ingress; "
        f"print(sorted(name for name in {MODEL_CODE!r} if name in sys.modules))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_the_test_tooling_is_outside_the_installed_package() -> None:
    import importlib.util

    assert importlib.util.find_spec("rerankd.testing") is None
    tooling = importlib.util.find_spec("testing")  # on sys.path through pytest's `pythonpath` (pyproject.toml)
    assert tooling is not None and tooling.origin is not None
    assert Path(tooling.origin).parent == REPO / "testing"
