"""First stages that narrow many documents to a few candidates: BM25 and bi-encoder embeddings."""

from rerankd.first_stage.bm25 import Bm25, bm25_scores
from rerankd.first_stage.embeddings import EmbeddingCache, EmbeddingScorer

__all__ = ["Bm25", "EmbeddingCache", "EmbeddingScorer", "bm25_scores"]
