"""ce-fixture: a cross-encoder with the exact shape of cross-encoder/ms-marco-MiniLM-L6-v2, buildable offline.

It is the packaged all-MiniLM-L6-v2 body with a seeded, untrained one-logit classification head. Its speed equals
the real model's; its scores are not relevance. For speed and score-equality tests only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rerankd.config import default_cache_dir
from rerankd.models.presets import packaged_default_path

FIXTURE_SEED = 0


def build_ce_fixture(cache_dir: Path | None = None, *, seed: int = FIXTURE_SEED) -> Path:
    """Build the fixture once into `cache_dir/fixtures/` and return its folder (reused when present)."""
    target = (cache_dir or default_cache_dir()) / "fixtures" / f"ce-fixture-seed{seed}"
    if (target / "config.json").is_file():
        return target

    # torch and transformers load here, not at the top: resolving any other model must not pay for them.
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    body = packaged_default_path()
    with torch.random.fork_rng(devices=[]):  # seeds the head without touching the caller's random state
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(body, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(body)
    # Build beside the target and rename, so a concurrent or interrupted build never leaves half a model.
    staging = target.with_name(f"{target.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    if target.exists():
        shutil.rmtree(staging)
    else:
        staging.rename(target)
    return target
