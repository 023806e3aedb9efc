"""First stages that narrow many documents to a few candidates: BM25 and bi-encoder embeddings."""

from rerankd.prefilter.bm25 import Bm25, bm25_scores
from rerankd.prefilter.embeddings import EmbeddingCache, EmbeddingPrefilter

__all__ = ["Bm25", "EmbeddingCache", "EmbeddingPrefilter", "bm25_scores"]
