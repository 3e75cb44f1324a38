"""How alike are slices of different volumes? The numbers behind the partition assumption of G^D and PCL,
measured on raw pixels: sampled slices, cross-slice similarity by partition and by gap, fields of view in mm.

G^D treats slices from the same partition of different volumes as positives; PCL does the same for slices whose
normalised positions are close. Both bet that, after the volumes are brought into one orientation, slice ``k`` of
one scan shows roughly the same anatomy as the slice at the same relative position of another scan. This module
measures that bet on raw pixels (no network involved):

* :func:`sample_slices` takes slices at evenly spread positions of every volume (the same slices for every S, so
  results for different S are comparable);
* :func:`partition_mean_slices` averages each partition of each volume;
* :func:`slice_similarity` gives a cross-slice similarity matrix (Pearson correlation or a global SSIM);
* :func:`partition_contrast` and :func:`similarity_by_distance` summarise it by partition and by position gap;
* :func:`slice_coordinates` and :func:`field_of_view_table` say where each slice lies in millimetres, which shows
  that "partition s" covers different anatomy when the fields of view differ.

Everything here is numpy on in-memory :class:`~glcl_core.data.volume.Volume` objects; figures live in
:mod:`glcl_core.viz.volumes`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from glcl_core.data.volume import Volume

SIMILARITIES = ("correlation", "ssim")


def in_plane_shape(volumes: Sequence[Volume]) -> tuple[int, int]:
    """The common ``(H, W)`` of the volumes; ValueError when they differ (load them with a fixed ``size=``)."""
    if not volumes:
        raise ValueError("no volumes")
    shapes = {tuple(v.image.shape[1:]) for v in volumes}
    if len(shapes) != 1:
        raise ValueError(f"volumes have different in-plane shapes {sorted(shapes)}; load them with size=(H, W)")
    return shapes.pop()


@dataclass
class SliceSample:
    """Slices taken from several volumes, with what G^D and PCL know about each.

    Attributes:
        images: ``(N, H, W)`` float32 slices.
        volume: ``(N,)`` int64 index of the source volume in the list given to :func:`sample_slices`.
        index: ``(N,)`` int64 slice index ``k`` inside its volume.
        n_slices: ``(N,)`` int64 number of slices ``Z`` of the source volume.
        names: the volumes' names (length V).
    """

    images: np.ndarray
    volume: np.ndarray
    index: np.ndarray
    n_slices: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def positions(self) -> np.ndarray:
        """``(N,)`` float64 normalised positions ``(k + 1) / Z`` (as :attr:`Volume.positions`)."""
        return (self.index + 1.0) / self.n_slices

    def partitions(self, n_partitions: int) -> np.ndarray:
        """``(N,)`` int64 partition of each slice for S partitions (as :meth:`Volume.partitions`)."""
        s = int(n_partitions)
        if s < 1:
            raise ValueError(f"n_partitions must be >= 1, got {n_partitions}")
        if np.any(self.n_slices < s):
            raise ValueError(f"a volume has fewer than {s} slices: cannot cut it into {s} partitions")
        return (self.index * s) // self.n_slices

    def order(self, n_partitions: int) -> np.ndarray:
        """``(N,)`` permutation sorting the slices by partition, then position, then volume (block order)."""
        return np.lexsort((self.volume, self.positions, self.partitions(n_partitions)))


def spread_indices(n_slices: int, n: int) -> np.ndarray:
    """Up to ``n`` slice indices at the centres of ``n`` equal bins of ``range(n_slices)`` (all when fewer)."""
    if n < 1:
        raise ValueError(f"need at least one slice per volume, got {n}")
    return np.unique(np.floor((np.arange(n) + 0.5) * n_slices / n).astype(np.int64))


def sample_slices(volumes: Sequence[Volume], per_volume: int = 12) -> SliceSample:
    """``per_volume`` slices of every volume at evenly spread positions (deterministic, independent of S)."""
    in_plane_shape(volumes)
    images, volume, index, n_slices = [], [], [], []
    for i, v in enumerate(volumes):
        chosen = spread_indices(v.n_slices, per_volume)
        images.append(v.image[chosen].astype(np.float32, copy=False))
        volume.append(np.full(len(chosen), i, dtype=np.int64))
        index.append(chosen)
        n_slices.append(np.full(len(chosen), v.n_slices, dtype=np.int64))
    return SliceSample(np.concatenate(images), np.concatenate(volume), np.concatenate(index),
                       np.concatenate(n_slices), [v.name for v in volumes])


def partition_mean_slices(volumes: Sequence[Volume], n_partitions: int) -> np.ndarray:
    """``(V, S, H, W)`` float32: the mean slice of each partition of each volume.

    Averaging over volumes (``.mean(axis=0)``) weighs every volume equally, whatever its slice count; the spread
    over volumes (``.std(axis=0)``) shows where partition s looks different from one volume to the next.
    """
    h, w = in_plane_shape(volumes)
    out = np.zeros((len(volumes), int(n_partitions), h, w), dtype=np.float32)
    for i, v in enumerate(volumes):
        parts = v.partitions(n_partitions)
        for s in range(int(n_partitions)):
            out[i, s] = v.image[parts == s].mean(axis=0)
    return out


def block_downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """``(N, H // f, W // f)`` block means (edges that do not fill a block are dropped)."""
    if factor <= 1:
        return images
    n, h, w = images.shape
    h2, w2 = h // factor, w // factor
    return images[:, :h2 * factor, :w2 * factor].reshape(n, h2, factor, w2, factor).mean(axis=(2, 4))


def slice_similarity(images: np.ndarray, kind: str = "correlation", downsample: int = 1) -> np.ndarray:
    """``(N, N)`` float64 symmetric similarity between the slices ``images (N, H, W)``.

    Args:
        kind: ``"correlation"``: Pearson correlation of the pixel values (1 on the diagonal; blank slices,
            which have no variance, get 0 with everything else). ``"ssim"``: the structural similarity index
            computed once over the whole image (global means, variances and covariance, constants for a
            [0, 1] range) instead of over sliding windows; it also penalises differences in brightness and
            contrast, which correlation ignores.
        downsample: block-mean factor applied first (less sensitive to small misalignments, faster).
    """
    if kind not in SIMILARITIES:
        raise ValueError(f"kind must be one of {SIMILARITIES}, got {kind!r}")
    x = block_downsample(np.asarray(images, dtype=np.float64), int(downsample)).reshape(len(images), -1)
    mean = x.mean(axis=1)
    centred = x - mean[:, None]
    if kind == "correlation":
        norm = np.linalg.norm(centred, axis=1)
        unit = np.divide(centred, norm[:, None], out=np.zeros_like(centred), where=norm[:, None] > 1e-12)
        sim = unit @ unit.T
        np.fill_diagonal(sim, 1.0)
        return np.clip(sim, -1.0, 1.0)
    c1, c2 = 0.01 ** 2, 0.03 ** 2  # the usual SSIM constants for data in [0, 1]
    var = (centred ** 2).mean(axis=1)
    cov = centred @ centred.T / x.shape[1]
    luminance = (2 * mean[:, None] * mean[None, :] + c1) / (mean[:, None] ** 2 + mean[None, :] ** 2 + c1)
    structure = (2 * cov + c2) / (var[:, None] + var[None, :] + c2)
    return luminance * structure


def cross_volume_pairs(sample: SliceSample) -> np.ndarray:
    """``(N, N)`` bool: pairs of slices from different volumes (the pairs G^D and PCL relabel)."""
    return sample.volume[:, None] != sample.volume[None, :]


@dataclass
class PartitionContrast:
    """Similarity of slices of *different* volumes, same partition vs other partitions.

    Attributes:
        n_partitions: S.
        same: mean similarity of pairs in the same partition (G^D's extra positives).
        other: mean similarity of pairs in different partitions (G^D's negatives).
        neighbour: mean over pairs in adjacent partitions (|s - s'| = 1), the hardest negatives.
        top1: fraction of slices whose most similar slice in another volume lies in the same partition.
        chance: the ``top1`` expected if similarity ignored anatomy (share of same-partition candidates).
    """

    n_partitions: int
    same: float
    other: float
    neighbour: float
    top1: float
    chance: float

    @property
    def gap(self) -> float:
        return self.same - self.other

    def __str__(self) -> str:
        return (f"S={self.n_partitions}: same partition {self.same:.3f} | other partitions {self.other:.3f} "
                f"(adjacent {self.neighbour:.3f}) | gap {self.gap:+.3f} | "
                f"nearest slice in another volume in the same partition: {self.top1:.0%} (chance {self.chance:.0%})")


def partition_contrast(similarity: np.ndarray, sample: SliceSample, n_partitions: int) -> PartitionContrast:
    """Summarise a :func:`slice_similarity` matrix by partition, over pairs from different volumes only."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.shape != (len(sample), len(sample)):
        raise ValueError(f"similarity is {sim.shape}, the sample has {len(sample)} slices")
    parts = sample.partitions(n_partitions)
    other_volume = cross_volume_pairs(sample)
    distance = np.abs(parts[:, None] - parts[None, :])
    same = other_volume & (distance == 0)
    other = other_volume & (distance > 0)
    neighbour = other_volume & (distance == 1)

    masked = np.where(other_volume, sim, -np.inf)
    has_candidate = other_volume.any(axis=1)
    best = masked.argmax(axis=1)
    top1 = float(np.mean(parts[best][has_candidate] == parts[has_candidate])) if has_candidate.any() else np.nan
    chance = float(np.mean((same.sum(axis=1) / np.maximum(other_volume.sum(axis=1), 1))[has_candidate])) \
        if has_candidate.any() else np.nan

    def mean_of(mask: np.ndarray) -> float:
        return float(sim[mask].mean()) if mask.any() else np.nan

    return PartitionContrast(int(n_partitions), mean_of(same), mean_of(other), mean_of(neighbour), top1, chance)


def similarity_by_distance(similarity: np.ndarray, sample: SliceSample, bin_width: float = 0.1) -> pd.DataFrame:
    """Mean similarity of slices of different volumes against their position gap ``|p_i - p_j|``.

    Returns:
        DataFrame with one row per non-empty bin: ``distance`` (bin centre), ``low``, ``high``, ``mean``, ``std``,
        ``pairs`` (number of ordered pairs).
    """
    if not 0 < bin_width <= 1:
        raise ValueError(f"bin_width must be in (0, 1], got {bin_width}")
    sim = np.asarray(similarity, dtype=np.float64)
    pos = sample.positions
    pairs = cross_volume_pairs(sample)
    gap = np.abs(pos[:, None] - pos[None, :])[pairs]
    values = sim[pairs]
    n_bins = int(np.ceil(1.0 / bin_width - 1e-9))
    which = np.minimum((gap / bin_width).astype(np.int64), n_bins - 1)
    rows = []
    for b in range(n_bins):
        inside = values[which == b]
        if inside.size:
            rows.append({"distance": (b + 0.5) * bin_width, "low": b * bin_width, "high": (b + 1) * bin_width,
                         "mean": float(inside.mean()), "std": float(inside.std()), "pairs": int(inside.size)})
    return pd.DataFrame(rows, columns=["distance", "low", "high", "mean", "std", "pairs"])


def slice_coordinates(volume: Volume) -> np.ndarray:
    """``(Z,)`` float64 scanner coordinate (mm) of each slice centre along the slice axis.

    Read from the loader's ``meta["canonical_affine"]`` (index ``(z, y, x)`` -> world mm): the coordinate is the
    slice origin projected on the slice direction, so it is world z for axial stacks and the through-plane
    coordinate for oblique ones. Volumes without that affine (built in memory) get ``k * spacing_z``.
    """
    affine = volume.meta.get("canonical_affine") if volume.meta else None
    k = np.arange(volume.n_slices, dtype=np.float64)
    if affine is None:
        return k * float(volume.spacing[0])
    affine = np.asarray(affine, dtype=np.float64)
    step = affine[:3, 0]
    length = float(np.linalg.norm(step))
    direction = step / length
    return float(direction @ affine[:3, 3]) + k * length


def field_of_view_table(volumes: Sequence[Volume], n_partitions: int) -> pd.DataFrame:
    """Where each volume's slices and partitions lie along the slice axis, in scanner millimetres.

    Columns: ``volume``, ``slices``, ``thickness`` (mm), ``start`` / ``end`` (first / last slice centre),
    ``extent`` (``end - start + thickness``), ``start_offset`` (``start`` minus the median ``start``), and per
    partition s ``p{s}_from`` / ``p{s}_to`` (its first / last slice centre). For the embedded data the slice
    axis is world z (inferior -> superior), so the columns compare anatomy across volumes up to the small
    per-subject rotation, scaling and shift.
    """
    rows = []
    for v in volumes:
        coords = slice_coordinates(v)
        parts = v.partitions(n_partitions)
        row = {"volume": v.name, "slices": v.n_slices, "thickness": float(v.spacing[0]),
               "start": float(coords[0]), "end": float(coords[-1]),
               "extent": float(coords[-1] - coords[0] + v.spacing[0])}
        for s in range(int(n_partitions)):
            inside = coords[parts == s]
            row[f"p{s}_from"], row[f"p{s}_to"] = float(inside[0]), float(inside[-1])
        rows.append(row)
    table = pd.DataFrame(rows)
    table.insert(6, "start_offset", table["start"] - table["start"].median())
    return table
