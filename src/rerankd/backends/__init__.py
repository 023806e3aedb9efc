"""Backends run a padded batch through a model and return numpy arrays; they know nothing of requests."""

from rerankd.backends.base import Backend, Batch
from rerankd.backends.load import load_backend

__all__ = ["Backend", "Batch", "load_backend"]
