"""Figures and widgets for the book (matplotlib, ipywidgets, umap). Nothing in glcl_core imports this package.

One submodule per topic: ``volumes`` (slices, labels, partitions), ``embeddings`` (masks, UMAP),
``local`` (regions, similarity maps), ``segmentation`` (overlays, Dice plots).
"""
from glcl_core.viz.volumes import chosen_slices, label_colormap, partition_colours, plot_volume

__all__ = ["chosen_slices", "label_colormap", "partition_colours", "plot_volume"]
