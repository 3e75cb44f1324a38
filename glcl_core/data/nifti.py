"""Reading one NIfTI file: its header checked (memory, channels, thin slab, field of view, voxel size, label grid)
before any voxel is read, then its voxels slab by slab as an image (float32) or a label (checked integers).

Every problem raises :class:`DataError` naming the file: unreadable or truncated files, headers whose array would
need more than ``GLCL_MAX_VOLUME_BYTES`` (default 4 GiB) of memory (checked before any voxel is read), thin slabs
with fewer than ``MIN_INPLANE_VOXELS`` voxels along an in-plane axis or a field of view smaller than one output
pixel, a multi-channel image without a chosen channel, labels with NaN, fractional or negative values or on another
grid than their image. Implausible voxel sizes (slices more than 100 mm apart or 50 times the in-plane spacing) only
warn.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np

from glcl_core.data.orientation import Orientation
from glcl_core.data.volume import DataError

AFFINE_TOLERANCE_VOXELS = 0.25  # image/label grids may differ by at most this fraction of a voxel
SLAB_VOXELS = 16_000_000  # voxels read at a time: bounds the temporaries on big CT volumes
# Largest array one image or label may need in memory (one channel, at least float32 per voxel), checked from the
# header before reading: a corrupt header can claim terabytes. Raise it with the environment variable.
MAX_VOLUME_BYTES_ENV = "GLCL_MAX_VOLUME_BYTES"
DEFAULT_MAX_VOLUME_BYTES = 4 * 1024 ** 3
MIN_INPLANE_VOXELS = 4  # fewer voxels along an in-plane axis: a thin slab, not a volume
IMPLAUSIBLE_SLICE_MM = 100.0  # slice spacing above this warns (a header in microns, or a wrong pixdim)
IMPLAUSIBLE_ANISOTROPY = 50.0  # slice spacing above this multiple of the in-plane spacing warns


def open_nifti(path: Path) -> nib.spatialimages.SpatialImage:
    """The lazily loaded image (header + proxy); DataError when the file cannot be opened, the header cannot be read
    or the array it declares would need more memory than :func:`max_volume_bytes` (checked before any voxel is read).

    The file stays open while the image lives so slab reads of a ``.nii.gz`` stream forward instead of restarting.
    """
    try:
        image = nib.load(str(path), keep_file_open=True)
    except MemoryError:
        raise
    except OSError as err:  # permission denied, a folder, a vanished file, ...
        raise DataError(f"{path}: cannot open the file ({type(err).__name__}: {err.strerror or err})") from err
    except Exception as err:  # nibabel raises many types for broken files
        try:  # nibabel reports an unreadable file as "Could not read file": say why
            with open(path, "rb"):
                pass
        except OSError as os_err:
            raise DataError(f"{path}: cannot open the file ({type(os_err).__name__}: "
                            f"{os_err.strerror or os_err})") from err
        raise DataError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})") from err
    if len(image.shape) < 2 or min(image.shape) < 1:
        raise DataError(f"{path}: NIfTI has unusable shape {image.shape}")
    check_memory(image, path)
    return image


def max_volume_bytes() -> int:
    """The memory one volume's array may take: ``$GLCL_MAX_VOLUME_BYTES`` (bytes, e.g. ``8e9``), default 4 GiB."""
    text = os.environ.get(MAX_VOLUME_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_VOLUME_BYTES
    try:
        value = int(float(text))
    except (ValueError, OverflowError) as err:
        raise DataError(f"{MAX_VOLUME_BYTES_ENV}={text!r} is not a number of bytes (e.g. 8e9)") from err
    if value <= 0:
        raise DataError(f"{MAX_VOLUME_BYTES_ENV}={text!r} must be a positive number of bytes")
    return value


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_memory(image: nib.spatialimages.SpatialImage, path: Path) -> None:
    """DataError when one channel of ``image`` would need more than :func:`max_volume_bytes` in memory (header shape
    x the larger of the stored item size and 4 bytes, the float32 the image is read into)."""
    shape3, _ = spatial_shape(tuple(int(n) for n in image.shape))
    try:
        itemsize = int(np.dtype(image.get_data_dtype()).itemsize)
    except Exception:  # an odd header dtype is reported when the voxels are read
        itemsize = 4
    needed = math.prod(int(n) for n in shape3) * max(itemsize, 4)
    limit = max_volume_bytes()
    if needed > limit:
        suggestion = 1 << max(30, (needed - 1).bit_length())  # the next power of two, at least 1 GiB
        raise DataError(f"{path}: header shape {tuple(int(n) for n in image.shape)} ({image.get_data_dtype()}) would "
                        f"need {human_bytes(needed)} ({needed:,} bytes) in memory, over the {human_bytes(limit)} "
                        f"limit: a corrupt header, or a scan too large for this machine; if it is real, raise the "
                        f"limit with the environment variable {MAX_VOLUME_BYTES_ENV} (e.g. "
                        f"{MAX_VOLUME_BYTES_ENV}={suggestion})")


def spatial_shape(shape: tuple[int, ...]) -> tuple[tuple[int, ...], int | None]:
    """``(3D shape, number of channels or None)``; singleton axes beyond the third are ignored.

    The channel count is -1 when more than one axis beyond the third is longer than 1 (unsupported).
    """
    dims = list(shape) + [1] * max(0, 3 - len(shape))
    extra = [d for d in dims[3:] if d != 1]
    if len(extra) > 1:
        return tuple(dims[:3]), -1
    return tuple(dims[:3]), (extra[0] if extra else None)


def channel_listing(channels: int | Iterable[int], names: dict | None = None) -> str:
    """``"0: T2, 1: ADC"`` from a dataset.json ``modality`` / ``channel_names`` mapping, else ``"0, 1, 2"``;
    ``channels``: a count (``0..C-1``) or the channel numbers."""
    names = {str(k): str(v) for k, v in (names or {}).items()} if isinstance(names, dict) else {}
    indices = range(channels) if isinstance(channels, int) else channels
    return ", ".join(f"{k}: {names[str(k)]}" if str(k) in names else str(k) for k in indices)


def choose_channel_hint() -> str:
    return "choose one with channel=K in Python (load_volumes(..., channel=K)) or --channel K on the command line"


def channel_index(shape: tuple[int, ...], path: Path, channel: int | None,
                  names: dict | None = None) -> tuple[int, ...]:
    """Indices for the stored axes beyond the third: 0 on singleton axes, ``channel`` on the channel axis.

    ``names``: the data set's channel names (``{"0": "T2", ...}``), listed when no or a wrong channel is chosen.
    """
    extras = list(shape[3:])
    long_axes = [i for i, n in enumerate(extras) if n != 1]
    if len(long_axes) > 1:
        raise DataError(f"{path}: {len(shape)}D array of shape {tuple(shape)} is not supported")
    index = [0] * len(extras)
    if not long_axes:
        if channel not in (None, 0):
            raise DataError(f"{path}: image is 3D {tuple(shape[:3])}; channel={channel} does not exist")
        return tuple(index)
    n_channels = extras[long_axes[0]]
    if channel is None:
        raise DataError(f"{path}: multi-channel image of shape {tuple(shape)} with {n_channels} channels/frames "
                        f"({channel_listing(n_channels, names)}) and none chosen; {choose_channel_hint()}")
    if not 0 <= channel < n_channels:
        raise DataError(f"{path}: channel={channel} out of range, the image has {n_channels} channels/frames "
                        f"({channel_listing(n_channels, names)}; shape {tuple(shape)}); {choose_channel_hint()}")
    index[long_axes[0]] = channel
    return tuple(index)


def read_slabs(image: nib.spatialimages.SpatialImage, path: Path, channel: int | None):
    """Yield ``(k0, k1, slab)``: scaled voxel values ``(X, Y, k1 - k0)`` of one channel, slab by slab along the
    last stored spatial axis, so a big CT (or a float64 label) is never held twice in memory."""
    shape = tuple(image.shape)
    extra = channel_index(shape, path, channel)
    if len(shape) == 2:
        shape, extra = shape + (1,), ()
    per_slab = max(1, SLAB_VOXELS // max(1, shape[0] * shape[1]))
    for k0 in range(0, shape[2], per_slab):
        k1 = min(shape[2], k0 + per_slab)
        try:
            if len(image.shape) == 2:
                slab = np.asarray(image.dataobj)[:, :, None]
            else:
                slab = np.asarray(image.dataobj[(slice(None), slice(None), slice(k0, k1)) + extra])
        except MemoryError:
            raise
        except Exception as err:  # EOFError, zlib.error, OSError, ValueError ... for truncated files
            raise DataError(f"{path}: cannot read voxel data, file truncated or corrupt "
                            f"({type(err).__name__}: {err})") from err
        if slab.dtype.kind not in "biuf":
            raise DataError(f"{path}: unsupported voxel type {slab.dtype} (need integer or float scalars)")
        if slab.shape != (shape[0], shape[1], k1 - k0):
            raise DataError(f"{path}: read {slab.shape} voxels, expected {(shape[0], shape[1], k1 - k0)} "
                            f"(truncated file?)")
        yield k0, k1, slab


def read_image_array(image: nib.spatialimages.SpatialImage, path: Path, channel: int | None) -> np.ndarray:
    """``(X, Y, Z)`` float32 (Fortran order, like the file) of one channel; DataError on NaN/Inf."""
    shape3, _ = spatial_shape(tuple(image.shape))
    out = np.empty(shape3, dtype=np.float32, order="F")
    for k0, k1, slab in read_slabs(image, path, channel):
        if slab.dtype.kind == "f" and not np.all(np.isfinite(slab)):
            raise DataError(f"{path}: image contains NaN or Inf intensities")
        out[:, :, k0:k1] = slab
    return out


def read_label_array(image: nib.spatialimages.SpatialImage, path: Path) -> np.ndarray:
    """``(X, Y, Z)`` uint8 (int32 when values exceed 255); DataError for NaN, non-integer or negative values."""
    shape3, _ = spatial_shape(tuple(image.shape))
    out = np.empty(shape3, dtype=np.uint8, order="F")
    for k0, k1, slab in read_slabs(image, path, None):
        if slab.dtype.kind == "f":
            if not np.all(np.isfinite(slab)):
                raise DataError(f"{path}: label contains NaN or Inf")
            fractional = slab != np.round(slab)
            if fractional.any():
                raise DataError(f"{path}: label has non-integer values (e.g. {np.unique(slab[fractional])[:3]})")
        if slab.size and slab.min() < 0:
            raise DataError(f"{path}: label has negative values (min {slab.min()})")
        if slab.size and slab.max() > np.iinfo(out.dtype).max:
            if slab.max() > np.iinfo(np.int32).max:
                raise DataError(f"{path}: label values up to {slab.max()} are too large")
            out = out.astype(np.int32, order="F")
        out[:, :, k0:k1] = slab
    return out


def grid_mismatch_mm(affine_a: np.ndarray, affine_b: np.ndarray, shape: tuple[int, int, int]) -> float:
    """Largest distance in mm between where two affines put the corners of a ``shape`` grid."""
    ends = [(0, n - 1) for n in shape]
    corners = np.array([[i, j, k, 1.0] for i in ends[0] for j in ends[1] for k in ends[2]])
    return float(np.max(np.linalg.norm((corners @ affine_a.T - corners @ affine_b.T)[:, :3], axis=1)))


def check_label_header(label: nib.spatialimages.SpatialImage, label_path: Path, image_shape: tuple[int, int, int],
                       image_affine: np.ndarray, image_path: Path) -> None:
    shape3, n_channels = spatial_shape(label.shape)
    if n_channels is not None:
        raise DataError(f"{label_path}: label must be 3D, got shape {label.shape}")
    if shape3 != tuple(image_shape):
        raise DataError(f"{label_path}: label shape {shape3} does not match image shape {tuple(image_shape)} "
                        f"of {image_path}")
    sizes = np.linalg.norm(np.asarray(image_affine)[:3, :3], axis=0)
    tolerance = AFFINE_TOLERANCE_VOXELS * float(sizes.min()) + 1e-3
    mismatch = grid_mismatch_mm(np.asarray(label.affine, float), np.asarray(image_affine, float), image_shape)
    if not mismatch <= tolerance:
        raise DataError(f"{label_path}: label affine does not match the image affine of {image_path} "
                        f"(grids differ by up to {mismatch:.3g} mm)")


def label_values(label: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a non-negative integer array, counted slab by slab (no full int64 copy)."""
    top = int(label.max()) if label.size else 0
    if top >= 1 << 20:
        return np.unique(label)
    counts = np.zeros(top + 1, dtype=np.int64)
    slabs = max(1, SLAB_VOXELS // max(1, int(np.prod(label.shape[:-1]))))
    for k in range(0, label.shape[-1], slabs):
        values = label[..., k:k + slabs].ravel(order="K").astype(np.intp, copy=False)
        counts += np.bincount(values, minlength=top + 1)[: top + 1]
    return np.flatnonzero(counts)


def check_slab(path: Path, shape3: tuple[int, ...], shape_in: tuple[int, ...], affine: np.ndarray,
               orientation: Orientation) -> None:
    """DataError for a thin slab: fewer than ``MIN_INPLANE_VOXELS`` voxels along an in-plane axis (the slice axis is
    the coarsest one, so a slab of finely spaced slices has its few slices in-plane)."""
    if min(shape_in) >= MIN_INPLANE_VOXELS:
        return
    sizes = tuple(float(v) for v in np.round(np.linalg.norm(affine[:3, :3], axis=0), 4))
    raise DataError(f"{path}: a thin slab, not a volume: {shape_in[0]} x {shape_in[1]} voxels in-plane (stored shape "
                    f"{tuple(int(n) for n in shape3)}, voxel size {sizes} mm; the slice axis is the coarsest, stored "
                    f"axis {orientation.order[0]}); at least {MIN_INPLANE_VOXELS} voxels are needed along each "
                    f"in-plane axis")


def check_field_of_view(path: Path, shape_in: tuple[int, ...], spacing_in: tuple[float, ...],
                        spacing_out: tuple[float, float]) -> None:
    """DataError when the in-plane field of view is smaller than one output pixel along an axis: nothing would be
    left of the image after resampling (extreme voxel sizes in the header, or a thin slab)."""
    fov = tuple(float(n) * float(s) for n, s in zip(shape_in, spacing_in))
    if all(f >= s for f, s in zip(fov, spacing_out)):
        return
    raise DataError(f"{path}: in-plane field of view {fov[0]:.3g} x {fov[1]:.3g} mm ({shape_in[0]} x {shape_in[1]} "
                    f"voxels of {spacing_in[0]:.3g} x {spacing_in[1]:.3g} mm) is smaller than one output pixel "
                    f"({spacing_out[0]:.3g} x {spacing_out[1]:.3g} mm): implausible voxel size in the header "
                    f"(pixdim / affine), or a thin slab")


def warn_implausible_spacing(path: Path, spacing: tuple[float, float, float]) -> None:
    """Warn (once per file, naming it) about slices more than ``IMPLAUSIBLE_SLICE_MM`` apart or more than
    ``IMPLAUSIBLE_ANISOTROPY`` times the in-plane spacing: usually a header in the wrong units. Not an error."""
    z, y, x = (float(v) for v in spacing)
    reasons = []
    if z > IMPLAUSIBLE_SLICE_MM:
        reasons.append(f"slices {z:.4g} mm apart (more than {IMPLAUSIBLE_SLICE_MM:g} mm)")
    if z > IMPLAUSIBLE_ANISOTROPY * min(y, x):
        reasons.append(f"slice spacing {z / min(y, x):.4g} times the in-plane spacing (more than "
                       f"{IMPLAUSIBLE_ANISOTROPY:g})")
    if reasons:
        warnings.warn(f"{path}: implausible voxel size {z:.4g} x {y:.4g} x {x:.4g} mm (slice, row, column): "
                      f"{'; '.join(reasons)}; check the header's pixdim / affine units", stacklevel=3)
