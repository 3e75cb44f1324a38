"""The teaching analyses: what pre-trained encoders learned, how alike the slices of different volumes are, what
the low-label results say. Submodules load on first use, so ``results`` and ``slices`` stay free of torch.

* :mod:`~glcl_core.analysis.embeddings`: slice embeddings, cross-volume kNN scores, similarity by position, UMAP;
* :mod:`~glcl_core.analysis.batch_masks`: a batch's contrastive masks in numbers and their chance loss;
* :mod:`~glcl_core.analysis.local_maps`: local feature maps and similarity maps (re-exports
  :mod:`~glcl_core.analysis.ablation`: local mask counts and the local-stage ablation);
* :mod:`~glcl_core.analysis.slices`: cross-volume slice statistics on raw pixels (no network);
* :mod:`~glcl_core.analysis.results`: summaries of a low-label grid's CSV (pure pandas / numpy / scipy);
* :mod:`~glcl_core.analysis.study`: the label-efficiency study's summary tables compared across presets (pandas).

``from glcl_core import analysis`` then ``analysis.<name>`` reaches every public name of the embeddings and
batch-mask modules (``analysis.chance_loss`` is the global one; the local one is ``local_maps.chance_loss``), and
``from glcl_core.analysis import results, study, slices, local_maps`` gives the submodules.
"""
from __future__ import annotations

import importlib

_SUBMODULES = ("embeddings", "batch_masks", "local_maps", "ablation", "slices", "results", "study")

# public name -> submodule defining it (every public name of the embedding and batch-mask analyses)
_NAMES = {
    "FEATURES": "embeddings",
    "META_COLUMNS": "embeddings",
    "embed_slices": "embeddings",
    "pixel_embeddings": "embeddings",
    "knn_predict": "embeddings",
    "knn_scores": "embeddings",
    "knn_table": "embeddings",
    "chance_scores": "embeddings",
    "similarity_by_position": "embeddings",
    "umap_2d": "embeddings",
    "batch_table": "batch_masks",
    "slices_table": "batch_masks",
    "mask_summary": "batch_masks",
    "chance_loss": "batch_masks",
    "strategy_chance_loss": "batch_masks",
    "threshold_table": "batch_masks",
}

__all__ = [
    "FEATURES",
    "embed_slices",
    "pixel_embeddings",
    "knn_predict",
    "knn_scores",
    "knn_table",
    "chance_scores",
    "similarity_by_position",
    "umap_2d",
    "batch_table",
    "slices_table",
    "mask_summary",
    "chance_loss",
    "strategy_chance_loss",
    "threshold_table",
]


def __getattr__(name: str):
    """Import the submodule ``name``, or the submodule defining ``name``, on first use."""
    if name in _NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES) | set(_SUBMODULES))
