"""Model resolution, kind detection, score conventions, settings precedence and the CLI."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TRAINED_CE
from sentence_transformers import CrossEncoder

from rerankd.cli import build_parser, main
from rerankd.config import Settings
from rerankd.engine.engine import Engine
from rerankd.errors import ModelNotFound
from rerankd.models import resolve_model
from rerankd.models.presets import PRESETS
from rerankd.models.templates import TEMPLATES


def test_packaged_default_is_a_bi_encoder() -> None:
    spec = resolve_model("default")
    assert spec.kind == "bi-encoder"
    assert spec.max_length == 256  # sentence-transformers' max_seq_length, not the 512 positions
    assert spec.pooling == "mean" and spec.normalize
    assert {"default", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"} <= set(spec.aliases)


def test_fixture_is_a_cross_encoder_with_sigmoid(ce_fixture_path: Path) -> None:
    spec = resolve_model(str(ce_fixture_path))
    assert (spec.kind, spec.num_labels, spec.activation, spec.max_length) == ("cross-encoder", 1, "sigmoid", 512)


def test_kind_override(ce_fixture_path: Path) -> None:
    assert resolve_model(str(ce_fixture_path), kind="bi-encoder").kind == "bi-encoder"


def test_unreachable_hub_id_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="not in the local Hugging Face cache"):
        resolve_model("some-org/not-cached-reranker")


def test_nonsense_name_lists_the_presets() -> None:
    with pytest.raises(ModelNotFound, match="minilm-l6"):
        resolve_model("not a model")


def test_presets_name_hub_ids() -> None:
    assert PRESETS["minilm-l6"].model_id == "cross-encoder/ms-marco-MiniLM-L6-v2"
    assert all(p.kind in {"cross-encoder", "causal-lm", "bi-encoder", "late-interaction"} for p in PRESETS.values())
    # An LLM preset names the prompt it falls back to, and that prompt exists.
    assert all((p.template in TEMPLATES) == (p.kind == "causal-lm") for p in PRESETS.values())


@pytest.mark.skipif(not TRAINED_CE.is_dir(), reason=f"the trained cross-encoder is not at {TRAINED_CE} (../shared)")
def test_engine_scores_equal_sentence_transformers_including_truncation() -> None:
    """The trained model, with documents longer than its window: same scores as CrossEncoder.predict."""
    documents = ["sqlite database engine", "game of ancient warfare " * 200, "menu editor", "x"]
    pairs = [("embedded database", doc) for doc in documents]
    reference = CrossEncoder(str(TRAINED_CE), device="cpu").predict(pairs)
    engine = Engine.load(resolve_model(str(TRAINED_CE)), Settings(max_batch_tokens=600, precision="fp32"))
    try:

        async def score() -> np.ndarray:
            return await engine.score(await engine.prepare("embedded database", documents))

        ours = asyncio.run(score())
    finally:
        engine.close()
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_settings_precedence_cli_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "rerankd.yaml"
    config.write_text("max_batch_tokens: 1000\nmax_documents: 7\nport: 9000\n")
    monkeypatch.setenv("RERANKD_MAX_DOCUMENTS", "8")
    monkeypatch.setenv("RERANKD_MODEL", "a, b")
    settings = Settings.load({"port": "9100"}, config)
    assert (settings.max_batch_tokens, settings.max_documents, settings.port) == (1000, 8, 9100)
    assert settings.model == ["a", "b"]


def test_bad_setting_names_the_setting() -> None:
    with pytest.raises(ValueError, match="max_batch_tokens"):
        Settings.load({"max_batch_tokens": "-5"})


def test_settings_built_in_code_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Manifest defaults (deploy/kubernetes.py) and replicas' settings must not pick up the caller's RERANKD_*.
    monkeypatch.setenv("RERANKD_PORT", "9100")
    monkeypatch.setenv("RERANKD_CHUNKING", "true")
    assert (Settings().port, Settings().chunking) == (8080, False)
    assert (Settings.load().port, Settings.load().chunking) == (9100, True)


def test_settings_file_errors_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="no such settings file"):
        Settings.load(config_file=tmp_path / "missing.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- port\n- 9000\n")
    with pytest.raises(ValueError, match=r"list\.yaml: expected a mapping"):
        Settings.load(config_file=listed)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("port: 9000\nbatch_tokens: 10\n")
    with pytest.raises(ValueError, match="batch_tokens"):
        Settings.load(config_file=unknown)
    monkeypatch.setenv("RERANKD_CONFIG", str(listed))  # the file may come from the environment too
    with pytest.raises(ValueError, match=r"list\.yaml"):
        Settings.load()
    with redirect_stdout(io.StringIO()):  # the CLI turns it into a message and exit status 2
        assert main(["config", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_configuration_doc_is_the_generated_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["config", "--markdown"]) == 0
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert out.getvalue().strip() in doc, "stale: regenerate docs/configuration.md with `rerankd config --markdown`"


def test_every_setting_is_a_serve_flag() -> None:
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = {option for action in serve._actions for option in action.option_strings}
    assert {"--" + name.replace("_", "-") for name in Settings.model_fields} <= flags


@pytest.mark.slow  # `rerankd rerank` in a subprocess
def test_rerank_command_prints_a_ranked_table(tmp_path: Path) -> None:
    documents = tmp_path / "docs.txt"
    documents.write_text("A game about ancient warfare\nSQLite storage backend for Akonadi\n\nhello world\n")
    result = subprocess.run(
        [sys.executable, "-m", "rerankd.cli", "rerank", "sqlite backend for akonadi", str(documents)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "index", "score", "document"]
    assert "SQLite storage backend" in lines[1]
    assert len(lines) == 4  # blank lines are not documents


@pytest.mark.slow  # `rerankd rerank` in a subprocess
def test_rerank_command_reads_stdin_as_json() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rerankd.cli", "rerank", "menu editor", "-", "--json", "--top-n", "1"],
        input="GNOME menu editing tool\nalarm clock\n", capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert [item["index"] for item in answer] == [0]
