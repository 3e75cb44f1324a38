"""The contrastive core: the masked InfoNCE kernel, local-region geometry, global and local strategies, health.
Re-exports its modules' public names except the functions ``global_masks`` and ``local_masks`` (see below).

Data flow: :mod:`~glcl_core.contrastive.global_masks` / :mod:`~glcl_core.contrastive.local_masks` turn batch
metadata (and, for the local loss, region embeddings from :mod:`~glcl_core.contrastive.regions` with the negatives
of :mod:`~glcl_core.contrastive.local_negatives`) into positive and negative masks;
:mod:`~glcl_core.contrastive.kernel` turns embeddings + masks into the loss (its memory-bounded block form is in
:mod:`~glcl_core.contrastive.kernel_blocks`); :mod:`~glcl_core.contrastive.health` says whether a stage learns.

The functions ``global_masks`` and ``local_masks`` share their module's name, so they are not re-exported here
(that would shadow the submodules): ``from glcl_core.contrastive.global_masks import global_masks``.
"""
from glcl_core.contrastive.global_masks import GD_PAIRINGS, GLOBAL_REDUCTION, GLOBAL_STRATEGIES, global_loss
from glcl_core.contrastive.health import (
    chance_level,
    collapse_reason,
    effective_rank,
    embedding_std,
    retrieval_top1,
)
from glcl_core.contrastive.kernel import (
    REDUCTIONS,
    BlockMask,
    info_nce_loop_reference,
    masked_info_nce,
    pair_info_nce,
)
from glcl_core.contrastive.local_masks import LD_PAIRS, LOCAL_STRATEGIES, local_ld_pairs, local_loss
from glcl_core.contrastive.local_negatives import (
    LD_NEGATIVE_REGIONS,
    LOCAL_NEGATIVES,
    SPARSE_NEGATIVES,
    resolve_local_negatives,
)
from glcl_core.contrastive.regions import (
    LOCAL_FORMS,
    OFFICIAL_SPARSE_NEGATIVES,
    OFFICIAL_SPARSE_NEGATIVES_1X1,
    POOLINGS,
    SPARSE_EXTRA_LATTICE,
    SPARSE_LATTICE,
    grid_region_corners,
    local_region_corners,
    official_negative_regions,
    pool_regions,
    sparse_region_corners,
)

__all__ = [
    # kernel
    "REDUCTIONS",
    "BlockMask",
    "masked_info_nce",
    "info_nce_loop_reference",
    "pair_info_nce",
    # regions
    "POOLINGS",
    "LOCAL_FORMS",
    "SPARSE_LATTICE",
    "SPARSE_EXTRA_LATTICE",
    "OFFICIAL_SPARSE_NEGATIVES",
    "OFFICIAL_SPARSE_NEGATIVES_1X1",
    "official_negative_regions",
    "sparse_region_corners",
    "grid_region_corners",
    "pool_regions",
    "local_region_corners",
    # global strategies (global_masks: import it from glcl_core.contrastive.global_masks)
    "GLOBAL_STRATEGIES",
    "GLOBAL_REDUCTION",
    "GD_PAIRINGS",
    "global_loss",
    # local strategies (local_masks: import it from glcl_core.contrastive.local_masks)
    "LOCAL_STRATEGIES",
    "LD_PAIRS",
    "local_ld_pairs",
    "local_loss",
    "LOCAL_NEGATIVES",
    "SPARSE_NEGATIVES",
    "LD_NEGATIVE_REGIONS",
    "resolve_local_negatives",
    # health
    "chance_level",
    "collapse_reason",
    "effective_rank",
    "embedding_std",
    "retrieval_top1",
]
