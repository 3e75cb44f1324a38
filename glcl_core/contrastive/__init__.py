"""The contrastive core beside the kernel: training-health diagnostics of a contrastive stage."""
from glcl_core.contrastive.health import (
    chance_level,
    collapse_reason,
    effective_rank,
    embedding_std,
    retrieval_top1,
)

__all__ = ["chance_level", "collapse_reason", "effective_rank", "embedding_std", "retrieval_top1"]
