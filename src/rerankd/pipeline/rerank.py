"""Old home of the wire types and `LocalService`: re-exports them from `types` and `service` for existing callers.

New code imports `rerankd.pipeline.types` (no model code) or `rerankd.pipeline.service` directly.
"""

from rerankd.pipeline.service import LocalService
from rerankd.pipeline.types import (
    MAX_CHUNKS_PER_DOC,
    ModelInfo,
    Ranked,
    RerankRequest,
    RerankResult,
    RerankService,
    State,
    check_limits,
    check_unicode,
    rank,
)

__all__ = [
    "MAX_CHUNKS_PER_DOC",
    "LocalService",
    "ModelInfo",
    "Ranked",
    "RerankRequest",
    "RerankResult",
    "RerankService",
    "State",
    "check_limits",
    "check_unicode",
    "rank",
]
