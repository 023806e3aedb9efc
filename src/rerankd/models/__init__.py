"""Finding models: hub ids, local folders, presets and the packaged default."""

from rerankd.models.resolve import ModelSpec, resolve_model

__all__ = ["ModelSpec", "resolve_model"]
