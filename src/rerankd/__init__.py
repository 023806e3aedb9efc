"""rerankd: a fast, honest reranking service."""

__version__ = "0.1.0"
