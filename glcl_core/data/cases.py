"""One case: what was found on disk for one volume (:class:`Case`: image, label, layout, subject) and how it is
read into a preprocessed :class:`Volume` (:func:`load_case`), plus its label at native resolution.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from glcl_core.data.nifti import (
    channel_index,
    channel_listing,
    check_field_of_view,
    check_label_header,
    check_slab,
    choose_channel_hint,
    label_values,
    open_nifti,
    read_image_array,
    read_label_array,
    spatial_shape,
    warn_implausible_spacing,
)
from glcl_core.data.orientation import Orientation, canonical_orientation, reorient, reoriented_affine
from glcl_core.data.preprocess import (
    intensity_range,
    native_grid,
    resample_image,
    resample_label,
    target_spacing,
)
from glcl_core.data.volume import DataError, Volume

# Native-resolution labels up to this many voxels are kept in Volume.meta["native_label"] (uint8: 1 byte each);
# larger ones (e.g. CT) are re-read from meta["label_path"] when a native-resolution Dice needs them.
NATIVE_LABEL_MAX_VOXELS = 8_000_000


@dataclass(frozen=True)
class Case:
    """One image (and maybe its label) found on disk, before reading.

    Attributes:
        name: volume name, e.g. ``"prostate_00"`` or ``"patient001_frame01"``.
        image / label: file paths (label None when there is none or labels are not wanted).
        layout: ``"decathlon"``, ``"acdc"``, ``"folder"`` or ``"file"``.
        subject: the person scanned (ACDC ED and ES frames share it): split by subject to avoid leaks.
        frame: ``"ED"`` / ``"ES"`` for ACDC, else None.
        allowed_labels: label values the data set declares (Decathlon), None when unknown.
        default_channel: channel used for a 4D image when the caller chose none (None: a 4D image is an error).
        channel_files: nnU-Net v2 style ``{channel: file}`` when each channel is its own 3D file (``image`` is then
            channel 0's, or the first one's), else None.
    """

    name: str
    image: Path
    label: Path | None
    layout: str
    subject: str
    frame: str | None = None
    allowed_labels: frozenset[int] | None = None
    default_channel: int | None = None
    extra: dict = field(default_factory=dict, compare=False)
    channel_files: dict | None = field(default=None, compare=False)


@dataclass(frozen=True)
class LoadOptions:
    """Preprocessing options shared by all cases of one :func:`load_volumes` call."""

    spacing: float | tuple[float, float] | str | None = "fit"
    size: tuple[int, int] | None = (128, 128)
    channel: int | None = None
    min_slices: int = 1
    percentiles: tuple[float, float] = (1.0, 99.0)


def normalise_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"size must be a positive int or (H, W), got {size!r}")
    return pair


def load_case(case: Case, options: LoadOptions) -> Volume:
    """Read, reorient, resample, crop/pad and normalise one case; DataError naming the file on any problem."""
    names = case.extra.get("modality") if isinstance(case.extra.get("modality"), dict) else None
    channel = options.channel if options.channel is not None else case.default_channel
    image_path, file_channel = case.image, channel
    if case.channel_files:  # nnU-Net style: one 3D file per channel
        image_path, channel = channel_file(case, channel, names)
        file_channel = None
    image_file = open_nifti(image_path)
    shape3, n_channels = spatial_shape(image_file.shape)
    channel_index(tuple(image_file.shape), image_path, file_channel, names)  # fail fast on a missing/bad channel
    affine = np.asarray(image_file.affine, dtype=np.float64)
    orientation = canonical_orientation(affine, str(image_path))
    n_slices = shape3[orientation.order[0]]
    if n_slices < options.min_slices:
        raise DataError(f"{image_path}: {n_slices} slices, fewer than the {options.min_slices} required "
                        f"(n_partitions / min_slices)")
    spacing_in = orientation.spacing[1:]
    shape_in = tuple(shape3[ax] for ax in orientation.order[1:])
    check_slab(image_path, shape3, shape_in, affine, orientation)
    label_file = None
    if case.label is not None:
        label_file = open_nifti(case.label)
        check_label_header(label_file, case.label, shape3, affine, image_path)

    spacing_out = target_spacing(spacing_in, shape_in, options.spacing, options.size)
    check_field_of_view(image_path, shape_in, spacing_in, spacing_out)
    warn_implausible_spacing(image_path, orientation.spacing)
    image = read_image(image_path, image_file, file_channel, orientation, spacing_out, options)
    label, native_label = None, None
    if label_file is not None:
        label, native_label = read_label(case, label_file, orientation, spacing_out, options.size)

    meta = {
        "layout": case.layout,
        "subject": case.subject,
        "frame": case.frame,
        "channel": channel if n_channels is not None or case.channel_files else None,
        "label_path": str(case.label) if case.label is not None else None,
        "original_shape": tuple(int(s) for s in image_file.shape),
        "original_spacing": tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)),
        "original_axcodes": "".join(str(c) for c in nib.aff2axcodes(affine)),
        "canonical_affine": reoriented_affine(affine, shape3, orientation),
        # for Dice at native resolution (glcl_core.train.evaluation.evaluate): the in-plane map between the grids, the
        # stored->canonical transpose/flips (to re-read a large label) and, when small, the native label itself
        "orientation": orientation,
        "native_grid": native_grid(shape_in, spacing_in, spacing_out, options.size),
        **({"native_label": native_label} if native_label is not None else {}),
        **case.extra,
    }
    spacing = (orientation.spacing[0], *spacing_out)
    return Volume(case.name, image, label, tuple(float(s) for s in spacing), str(image_path), meta)


def channel_file(case: Case, channel: int | None, names: dict | None) -> tuple[Path, int]:
    """The file and number of the chosen channel of an nnU-Net style case (one file per channel); the only one
    when there is one and none is chosen."""
    files = case.channel_files
    where = case.image.parent / f"{case.name}_NNNN"
    if channel is None:
        if len(files) == 1:
            return next(iter(files.values())), next(iter(files))
        raise DataError(f"{where}: {len(files)} channel files ({channel_listing(files, names)}) and none chosen; "
                        f"{choose_channel_hint()}")
    if channel not in files:
        raise DataError(f"{where}: channel={channel} has no file, the case has channel(s) "
                        f"{channel_listing(files, names)}; {choose_channel_hint()}")
    return files[channel], channel


def read_image(path: Path, image_file, channel: int | None, orientation: Orientation,
               spacing_out: tuple[float, float], options: LoadOptions) -> np.ndarray:
    """``(Z, H, W)`` float32 preprocessed image of one file."""
    stored = read_image_array(image_file, path, channel)
    value_range = intensity_range(stored, options.percentiles, str(path))
    return resample_image(reorient(stored, orientation), orientation.spacing[1:], spacing_out, options.size,
                          value_range, str(path), check_finite=False)


def read_label(case: Case, label_file, orientation: Orientation, spacing_out: tuple[float, float],
               size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(Z, H, W)`` int64 preprocessed label, values checked against the data set's declared labels, and the
    native-resolution label ``(Z, H0, W0)`` (uint8, int32 for values > 255) in canonical orientation, or None when
    it has more than ``NATIVE_LABEL_MAX_VOXELS`` voxels (then :func:`native_label` re-reads it)."""
    stored = read_label_array(label_file, case.label)
    if case.allowed_labels is not None:
        unknown = sorted(set(label_values(stored).tolist()) - set(case.allowed_labels))
        if unknown:
            raise DataError(f"{case.label}: label values {unknown} are not listed in dataset.json labels "
                            f"{sorted(case.allowed_labels)}")
    canonical = reorient(stored, orientation)
    native = np.ascontiguousarray(canonical) if stored.size <= NATIVE_LABEL_MAX_VOXELS else None
    return resample_label(canonical, orientation.spacing[1:], spacing_out, size), native


def native_label(volume: Volume) -> np.ndarray | None:
    """The label of ``volume`` on its native grid: ``(Z, H0, W0)`` integer array in canonical orientation (the
    stored label transposed/flipped like the image, not resampled), with ``(H0, W0) ==
    volume.meta["native_grid"].shape``.

    Taken from ``meta["native_label"]`` (kept for small labels) or re-read from ``meta["label_path"]``; None when
    the volume carries neither (e.g. built by hand) or the file can no longer be read (a warning says why).
    """
    meta = volume.meta or {}
    if meta.get("native_label") is not None:
        return meta["native_label"]
    path, orientation = meta.get("label_path"), meta.get("orientation")
    if path is None or orientation is None:
        return None
    try:
        stored = read_label_array(open_nifti(Path(path)), Path(path))
    except (DataError, OSError) as err:
        warnings.warn(f"{volume.name}: cannot re-read the native label ({err})", stacklevel=2)
        return None
    return np.ascontiguousarray(reorient(stored, orientation))
