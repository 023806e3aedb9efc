"""ce-fixture: a cross-encoder with the exact shape of cross-encoder/ms-marco-MiniLM-L6-v2, buildable offline.

It is the packaged all-MiniLM-L6-v2 body with a seeded, untrained one-logit classification head. Its speed equals
the real model's; its scores are not relevance. For speed and score-equality tests only.
"""

from __future__ import annotations

from pathlib import Path

from rerankd.cachedir import build_once
from rerankd.config import default_cache_dir
from rerankd.models.presets import packaged_default_path

FIXTURE_SEED = 0


def build_ce_fixture(cache_dir: Path | None = None) -> Path:
    """Build the fixture once into `cache_dir/fixtures/` and return its folder (reused when present)."""
    target = (cache_dir or default_cache_dir()) / "fixtures" / f"ce-fixture-seed{FIXTURE_SEED}"
    return build_once(target, _build, done="config.json")


def _build(folder: Path) -> None:
    # torch and transformers load here, not at the top: resolving any other model must not pay for them.
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    body = packaged_default_path()
    with torch.random.fork_rng(devices=[]):  # seeds the head without touching the caller's random state
        torch.manual_seed(FIXTURE_SEED)
        model = AutoModelForSequenceClassification.from_pretrained(body, num_labels=1)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(body).save_pretrained(folder)
