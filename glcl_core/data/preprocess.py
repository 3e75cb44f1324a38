"""Preprocessing of one reoriented scan: in-plane resampling, centre crop/pad, intensity normalisation, and the
map from the preprocessed grid back to the native one.

The array is already in the canonical ``(Z, H, W)`` orientation (:mod:`glcl_core.data.orientation`).

Resampling: in-plane only (the slice axis is kept), bilinear for images (with block means and a Gaussian against
aliasing when down-sampling), nearest for labels. The output grid is centred on the stored field of view and the
centre crop/pad to ``(H, W)`` happens in the same pass (no full-size intermediate).

Intensity: clip to the 1st/99th percentile of the volume (estimated on <= 2 M voxels) and scale to ``[0, 1]``.
Padding takes the value 0, i.e. the clipped minimum (background for MR, air for CT).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

from glcl_core.data.volume import DataError

CHUNK_VOXELS = 16_000_000  # voxels per slab when resampling: bounds the temporaries on big CT volumes
PERCENTILE_SAMPLES = 2_000_000


def target_spacing(
    spacing_in: tuple[float, float],
    shape_in: tuple[int, int],
    spacing: float | tuple[float, float] | str | None,
    size: tuple[int, int] | None,
) -> tuple[float, float]:
    """In-plane output spacing ``(y, x)`` in mm.

    ``spacing`` is a number or ``(y, x)`` pair in mm, ``None`` to keep the stored spacing, or ``"fit"``: the
    isotropic spacing at which the whole stored field of view just fits into ``size`` (per volume).
    """
    if spacing is None or (isinstance(spacing, str) and size is None):
        return float(spacing_in[0]), float(spacing_in[1])
    if isinstance(spacing, str):
        if spacing != "fit":
            raise ValueError(f"spacing must be a number, a (y, x) pair, None or 'fit'; got {spacing!r}")
        fov = (shape_in[0] * spacing_in[0], shape_in[1] * spacing_in[1])
        fitted = max(fov[0] / size[0], fov[1] / size[1])
        return fitted, fitted
    pair = (float(spacing), float(spacing)) if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if len(pair) != 2 or min(pair) <= 0 or not all(math.isfinite(s) for s in pair):
        raise ValueError(f"spacing must be positive (y, x) mm, got {spacing!r}")
    return pair


def sample_positions(n_in: int, s_in: float, s_out: float, n_out: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Input index ``(n_out,)`` float64 for each output pixel, centred on the input field of view, and a mask
    ``(n_out,)`` bool of positions that fall inside the input (the rest is padding).

    With ``n_out=None`` the output covers the input field of view (``round(n_in * s_in / s_out)`` pixels).
    """
    if n_out is None:
        n_out = max(1, int(round(n_in * s_in / s_out)))
    ratio = s_out / s_in
    if abs(ratio - 1.0) < 1e-6:  # same spacing: a pure integer shift (crop/pad), no half-pixel blur
        shift = (n_in - n_out) // 2 if n_in >= n_out else -((n_out - n_in) // 2)
        positions = np.arange(n_out, dtype=np.float64) + shift
    else:
        positions = (n_in - 1) / 2.0 + (np.arange(n_out) - (n_out - 1) / 2.0) * ratio
    inside = (positions >= -0.5) & (positions <= n_in - 0.5)
    return positions, inside


def linear_weights(positions: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left index, right index and right weight (each ``(n_out,)``) for linear interpolation with edge clamping."""
    clamped = np.clip(positions, 0.0, n_in - 1)
    left = np.minimum(np.floor(clamped).astype(np.intp), max(n_in - 2, 0))
    right = np.minimum(left + 1, n_in - 1)
    weight = (clamped - left).astype(np.float32)
    return left, right, weight


def nearest_index(positions: np.ndarray, n_in: int) -> np.ndarray:
    return np.clip(np.floor(positions + 0.5), 0, n_in - 1).astype(np.intp)


def intensity_range(
    array: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0), source: str = ""
) -> tuple[float, float]:
    """Lower and upper clip values: the given percentiles of ``array`` (any shape) on a regular subsample of
    at most 2 M voxels. The stride is made coprime with every axis length so it does not lock onto one row."""
    flat = array.ravel(order="K")  # a view for C- or Fortran-ordered arrays (nibabel gives Fortran order)
    step = max(1, flat.size // PERCENTILE_SAMPLES)
    while step > 1 and any(math.gcd(step, n) != 1 for n in array.shape):
        step += 1
    sample = flat[::step].astype(np.float32)
    if not np.all(np.isfinite(sample)):
        raise DataError(f"{source}: image contains NaN or Inf intensities")
    lo, hi = np.percentile(sample, percentiles)
    if not hi > lo:  # e.g. a tiny object on a flat background: fall back to the full range
        lo, hi = float(sample.min()), float(sample.max())
    if not hi > lo:
        raise DataError(f"{source}: image has constant intensity {lo:g}; nothing to learn from")
    return float(lo), float(hi)


def resample_image(
    volume: np.ndarray,
    spacing_in: tuple[float, float],
    spacing_out: tuple[float, float],
    size: tuple[int, int] | None,
    value_range: tuple[float, float],
    source: str = "",
    check_finite: bool = True,
) -> np.ndarray:
    """Bilinear in-plane resampling, centre crop/pad and intensity normalisation in one pass.

    Args:
        volume: ``(Z, H_in, W_in)`` any real dtype, possibly a strided view.
        spacing_in / spacing_out: ``(y, x)`` mm.
        size: ``(H, W)`` output size, or None for the resampled field of view.
        value_range: ``(lo, hi)`` clip values; output is ``(clip(v) - lo) / (hi - lo)``.
        check_finite: raise DataError on NaN/Inf (skip when the caller has checked already).
    Returns:
        ``(Z, H, W)`` float32 in ``[0, 1]``; padding is 0. Anti-aliasing for a down-sampling factor ``f``: means of
        ``floor(f)`` pixel blocks, then a Gaussian of sigma ``(f' - 1) / 2`` for the remaining factor ``f'``.
        Works slab by slab to bound temporaries.
    """
    n_slices, h_in, w_in = volume.shape
    rows, rows_inside = sample_positions(h_in, spacing_in[0], spacing_out[0], None if size is None else size[0])
    cols, cols_inside = sample_positions(w_in, spacing_in[1], spacing_out[1], None if size is None else size[1])
    # Strong down-sampling: average blocks of n pixels first (cheap), then a small Gaussian for the rest.
    row_block = max(1, int(spacing_out[0] / spacing_in[0] + 1e-6))
    col_block = max(1, int(spacing_out[1] / spacing_in[1] + 1e-6))
    h_mid, w_mid = h_in // row_block, w_in // col_block
    if h_mid < 1 or w_mid < 1:  # the whole input is less than one output pixel (the loader rejects this earlier)
        raise DataError(f"{source}: in-plane size {h_in} x {w_in} voxels of {spacing_in[0]:.3g} x "
                        f"{spacing_in[1]:.3g} mm is smaller than one output pixel ({spacing_out[0]:.3g} x "
                        f"{spacing_out[1]:.3g} mm): a thin slab or an implausible voxel size")
    r0, r1, rw = linear_weights((rows - (row_block - 1) / 2.0) / row_block, h_mid)
    c0, c1, cw = linear_weights((cols - (col_block - 1) / 2.0) / col_block, w_mid)
    sigma_rows = max(0.0, (spacing_out[0] / (spacing_in[0] * row_block) - 1.0) / 2.0)
    sigma_cols = max(0.0, (spacing_out[1] / (spacing_in[1] * col_block) - 1.0) / 2.0)
    check_finite = check_finite and volume.dtype.kind == "f"

    out = np.empty((n_slices, rows.size, cols.size), dtype=np.float32)
    chunk = max(1, CHUNK_VOXELS // max(1, h_in * w_in))
    for k0 in range(0, n_slices, chunk):
        block = np.array(volume[k0:k0 + chunk], dtype=np.float32, order="C", copy=True)  # float32 slab we own
        if check_finite and not np.all(np.isfinite(block)):
            raise DataError(f"{source}: image contains NaN or Inf intensities")
        block = block_mean(block, row_block, col_block)
        if sigma_rows > 0.1 and h_mid > 1:
            gaussian_filter1d(block, sigma_rows, axis=1, output=block, mode="nearest", truncate=3.0)
        if sigma_cols > 0.1 and w_mid > 1:
            gaussian_filter1d(block, sigma_cols, axis=2, output=block, mode="nearest", truncate=3.0)
        top = block[:, r0, :]
        top += (block[:, r1, :] - top) * rw[None, :, None]
        left = top[:, :, c0]
        left += (top[:, :, c1] - left) * cw[None, None, :]
        out[k0:k0 + chunk] = left

    lo, hi = np.float32(value_range[0]), np.float32(value_range[1])
    np.clip(out, lo, hi, out=out)
    out -= lo
    out /= hi - lo  # float32 throughout: the clipped extremes map to exactly 0 and 1
    out[:, ~rows_inside, :] = 0.0
    out[:, :, ~cols_inside] = 0.0
    return out


def block_mean(block: np.ndarray, row_block: int, col_block: int) -> np.ndarray:
    """``(k, H // row_block, W // col_block)`` means of non-overlapping blocks (a trailing partial block is dropped:
    less than one output pixel at the far edge)."""
    if row_block == 1 and col_block == 1:
        return block
    k, h, w = block.shape
    h_mid, w_mid = h // row_block, w // col_block
    trimmed = block[:, : h_mid * row_block, : w_mid * col_block]
    return trimmed.reshape(k, h_mid, row_block, w_mid, col_block).mean(axis=(2, 4), dtype=np.float32)


def resample_label(
    label: np.ndarray,
    spacing_in: tuple[float, float],
    spacing_out: tuple[float, float],
    size: tuple[int, int] | None,
) -> np.ndarray:
    """Nearest-neighbour twin of :func:`resample_image` for a label ``(Z, H_in, W_in)`` integer array (any view).

    Returns ``(Z, H, W)`` int64, padding 0.
    """
    _, h_in, w_in = label.shape
    rows, rows_inside = sample_positions(h_in, spacing_in[0], spacing_out[0], None if size is None else size[0])
    cols, cols_inside = sample_positions(w_in, spacing_in[1], spacing_out[1], None if size is None else size[1])
    picked = label[:, nearest_index(rows, h_in), :][:, :, nearest_index(cols, w_in)]
    out = picked.astype(np.int64)
    out[:, ~rows_inside, :] = 0
    out[:, :, ~cols_inside] = 0
    return out


def normalise_intensity(image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """Standalone version of the intensity step: clip ``image`` (any shape) to its percentiles, scale to [0, 1]."""
    lo, hi = intensity_range(np.ascontiguousarray(image), percentiles=percentiles)
    out = np.clip(image.astype(np.float32), lo, hi)
    return (out - np.float32(lo)) / np.float32(hi - lo)


def crop_or_pad(array: np.ndarray, size: tuple[int, int], fill: float = 0) -> np.ndarray:
    """Centre crop/pad the last two axes of ``array`` (``(..., H_in, W_in)``) to ``size`` with ``fill``."""
    out = np.full(array.shape[:-2] + tuple(size), fill, dtype=array.dtype)
    src, dst = [], []
    for n_in, n_out in zip(array.shape[-2:], size):
        start_in = max(0, (n_in - n_out) // 2)
        start_out = max(0, (n_out - n_in) // 2)
        length = min(n_in, n_out)
        src.append(slice(start_in, start_in + length))
        dst.append(slice(start_out, start_out + length))
    out[(..., *dst)] = array[(..., *src)]
    return out


# ----------------------------------------------------------------------------------------------- back to native
NATIVE_INTERPOLATIONS = ("linear", "nearest")


@dataclass(frozen=True)
class NativeGrid:
    """Where the preprocessed in-plane grid lies on the native grid (the stored array in canonical orientation).

    Pixel centres map as ``native index = origin + step * preprocessed index`` along rows and along columns; the
    slice axis is never resampled, so slice ``k`` is slice ``k`` on both grids. This is all that is needed to map a
    prediction back through the in-plane resampling and the centre crop/pad of :func:`resample_image` /
    :func:`resample_label` (which place pixel centres with :func:`sample_positions`).

    Attributes:
        shape: ``(H0, W0)`` native in-plane size, canonical ``(row, column)`` order.
        spacing: ``(y, x)`` native in-plane voxel size in mm.
        resampled_shape: ``(H, W)`` in-plane size after preprocessing.
        resampled_spacing: ``(y, x)`` in-plane voxel size in mm after preprocessing.
        origin: ``(row, col)`` native index of the centre of preprocessed pixel ``(0, 0)`` (may be negative or
            fractional: padding, or a grid offset of resampling).
        step: ``(row, col)`` native pixels per preprocessed pixel (``resampled_spacing / spacing``).
    """

    shape: tuple[int, int]
    spacing: tuple[float, float]
    resampled_shape: tuple[int, int]
    resampled_spacing: tuple[float, float]
    origin: tuple[float, float]
    step: tuple[float, float]

    def resampled_coordinates(self, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """For in-plane ``axis`` (0 rows, 1 columns): ``(n_native,)`` float64 preprocessed-grid coordinate of each
        native pixel centre, and ``(n_native,)`` bool: whether it lies inside the preprocessed field of view
        (the rest was cropped away)."""
        coords = (np.arange(self.shape[axis], dtype=np.float64) - self.origin[axis]) / self.step[axis]
        inside = (coords >= -0.5) & (coords <= self.resampled_shape[axis] - 0.5)
        return coords, inside


def native_grid(
    shape_in: tuple[int, int],
    spacing_in: tuple[float, float],
    spacing_out: tuple[float, float],
    size: tuple[int, int] | None,
) -> NativeGrid:
    """The :class:`NativeGrid` of an in-plane resampling from ``shape_in`` ``(H0, W0)`` at ``spacing_in`` ``(y, x)`` mm
    to ``spacing_out`` with centre crop/pad to ``size`` ``(H, W)`` (None: the resampled field of view), exactly as
    :func:`resample_image` and :func:`resample_label` lay out their output."""
    origin, step, n_out = [], [], []
    for axis in range(2):
        positions, _ = sample_positions(int(shape_in[axis]), float(spacing_in[axis]), float(spacing_out[axis]),
                                        None if size is None else int(size[axis]))
        ratio = float(spacing_out[axis]) / float(spacing_in[axis])
        origin.append(float(positions[0]))
        step.append(1.0 if abs(ratio - 1.0) < 1e-6 else ratio)  # sample_positions' pure-shift case
        n_out.append(int(positions.size))
    return NativeGrid(
        shape=(int(shape_in[0]), int(shape_in[1])),
        spacing=(float(spacing_in[0]), float(spacing_in[1])),
        resampled_shape=(n_out[0], n_out[1]),
        resampled_spacing=(float(spacing_out[0]), float(spacing_out[1])),
        origin=(origin[0], origin[1]),
        step=(step[0], step[1]),
    )


def scores_to_native(scores: np.ndarray, grid: NativeGrid, interpolation: str = "linear") -> np.ndarray:
    """Native-grid label map from per-class scores on the preprocessed grid.

    Args:
        scores: ``(Z, K, H, W)`` float class scores (e.g. softmax probabilities) of ``Z`` slices on the preprocessed
            grid, ``(H, W) == grid.resampled_shape``.
        grid: the volume's :class:`NativeGrid`.
        interpolation: ``"linear"``: bilinear interpolation of the scores at each native pixel centre (edge values
            held within half a pixel of the border), then argmax: smooth boundaries when the native grid is finer;
            ``"nearest"``: the scores of the nearest preprocessed pixel, then argmax (the same as nearest-neighbour
            resampling of the predicted label map).
    Returns:
        ``(Z, H0, W0)`` int64 labels, ``(H0, W0) == grid.shape``. Native pixels outside the preprocessed field of
        view (cropped away by preprocessing; the network never saw them) are 0 (background). Ties in the argmax go
        to the lower class index. Works in slabs of slices to bound the temporaries.
    """
    if interpolation not in NATIVE_INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {NATIVE_INTERPOLATIONS}, got {interpolation!r}")
    scores = np.asarray(scores)
    if scores.ndim != 4 or tuple(scores.shape[2:]) != tuple(grid.resampled_shape):
        raise ValueError(f"scores must be (Z, K, {grid.resampled_shape[0]}, {grid.resampled_shape[1]}), "
                         f"got {scores.shape}")
    n_slices, n_classes, h, w = scores.shape
    rows, rows_inside = grid.resampled_coordinates(0)
    cols, cols_inside = grid.resampled_coordinates(1)
    out = np.zeros((n_slices,) + tuple(grid.shape), dtype=np.int64)
    per_slice = n_classes * max(grid.shape[0] * max(w, grid.shape[1]), h * w)
    chunk = max(1, (CHUNK_VOXELS // 4) // max(1, per_slice))
    if interpolation == "nearest":
        r_near, c_near = nearest_index(rows, h), nearest_index(cols, w)
    else:
        r0, r1, rw = linear_weights(rows, h)
        c0, c1, cw = linear_weights(cols, w)
    for k0 in range(0, n_slices, chunk):
        block = np.asarray(scores[k0:k0 + chunk], dtype=np.float32)
        if interpolation == "nearest":
            native = block[:, :, r_near, :][:, :, :, c_near]
        else:
            top = block[:, :, r0, :]
            top += (block[:, :, r1, :] - top) * rw[None, None, :, None]
            native = top[:, :, :, c0]
            native += (top[:, :, :, c1] - native) * cw[None, None, None, :]
        out[k0:k0 + chunk] = native.argmax(axis=1)
    out[:, ~rows_inside, :] = 0
    out[:, :, ~cols_inside] = 0
    return out
