"""Batched, on-device, seeded augmentation: paired views for contrastive pre-training, warped pairs for
fine-tuning.

One module per part: ``params`` (the dataclasses, presets and :data:`GLOBAL_AUGMENTATIONS`), ``transforms`` (random
draws, spatial warp, intensity maps), ``views`` (:func:`make_views`, :func:`global_views`, :func:`local_views`,
:func:`augment_pair`, :func:`augment_batch`). Every public name is re-exported here:
``from glcl_core.augment import global_augmentation, make_views, global_views, local_views``.
"""
from glcl_core.augment.params import (
    GLCL_GEOMETRIC_AUG,
    GLOBAL_AUGMENTATIONS,
    PCL_AUG,
    GlobalAug,
    IntensityAug,
    LocalAug,
    SegAug,
    SpatialAug,
    global_augmentation,
)
from glcl_core.augment.views import (
    augment_batch,
    augment_pair,
    global_views,
    local_views,
    make_views,
    spatial_intensity,
)

__all__ = [
    "IntensityAug", "SpatialAug", "LocalAug", "GlobalAug", "SegAug",
    "GLCL_GEOMETRIC_AUG", "PCL_AUG", "GLOBAL_AUGMENTATIONS", "global_augmentation",
    "spatial_intensity", "global_views", "local_views", "augment_pair", "augment_batch", "make_views",
]
