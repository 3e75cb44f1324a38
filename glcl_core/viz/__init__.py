"""Figures and widgets for the book (matplotlib, ipywidgets, umap). Nothing in glcl_core imports this package.

One submodule per topic: ``volumes`` (slices, labels, partitions), ``browse`` (widgets over volumes),
``embeddings`` (views, loss curves, UMAP) with ``masks`` (contrastive masks), ``local`` (regions, similarity maps)
with ``ablation`` (local-stage ablation), ``segmentation`` (Dice plots) with ``overlays`` (segmentation overlays),
``study`` (the label-efficiency study across presets).
Each pair's second module is re-exported by the first (``embeddings.plot_masks``, ``local.plot_ablation``,
``segmentation.plot_overlays`` keep working).
"""
from glcl_core.viz.volumes import chosen_slices, label_colormap, partition_colours, plot_volume

__all__ = ["chosen_slices", "label_colormap", "partition_colours", "plot_volume"]
