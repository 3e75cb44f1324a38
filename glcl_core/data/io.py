"""Loading the volumes of a data folder: its layout detected, its cases found (one layout module each) and
read one by one (:func:`load_volumes`), and a short summary of what was loaded.

Layouts (detected in this order; one module each: ``decathlon.py``, ``acdc.py``, ``folder.py``):

1. **Medical Segmentation Decathlon**: ``dataset.json`` (``labels``, ``modality``, ``training`` list of
   ``{"image", "label"}``), ``imagesTr/``, ``labelsTr/``. Multi-channel images ``(X, Y, Z, C)`` give one channel
   (``channel``, default 0 = the first modality). Label values must be keys of ``labels``.
2. **ACDC**: ``patientXXX/`` folders with ``patientXXX_frameYY.nii.gz``, ``patientXXX_frameYY_gt.nii.gz`` and
   ``Info.cfg`` (``ED: 1``, ``ES: 12``). The ED and/or ES frames are loaded (``frames``); the 4D cine
   ``patientXXX_4d.nii.gz`` never is. The path may be the data root (patients up to three folders down, e.g.
   ``training/``, ``testing/``) or one patient folder.
3. **Plain folder** of NIfTI files: ``case.nii.gz`` with an optional ``case_label`` / ``_labels`` / ``_seg`` /
   ``_segmentation`` / ``_gt`` / ``_mask`` partner, or ``images/`` + ``labels/`` subfolders with matching names.
   Images without labels give ``label=None``. A single NIfTI file is also accepted.

Hidden files and macOS debris (``._*``) are skipped everywhere. Nothing is ever written to the data folder.
Every problem raises :class:`DataError` naming the file (or folder, or ``dataset.json`` entry) and the problem:
unreadable files and folders, paths in ``dataset.json`` that are not strings or point outside the data folder,
headers whose array would need more than ``GLCL_MAX_VOLUME_BYTES`` (default 4 GiB) of memory (checked before any
voxel is read), thin slabs with fewer than ``MIN_INPLANE_VOXELS`` voxels along an in-plane axis or a field of view
smaller than one output pixel, a multi-channel image without a chosen channel. Implausible voxel sizes (slices more
than 100 mm apart or 50 times the in-plane spacing) only warn. With ``load_volumes(..., errors="skip")`` a problem
with one case (or one ``dataset.json`` entry, or one ACDC patient folder) warns and skips it instead.

nnU-Net v2 data sets are read too: ``dataset.json`` with ``"labels": {"background": 0, ...}`` and
``"channel_names"``, one file per channel (``case_0000.nii.gz``, ``case_0001.nii.gz``) paired with
``labelsTr/case.nii.gz``: the channels of one case form one volume (``channel`` picks the file).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from glcl_core.data.acdc import ACDC_FRAMES, acdc_cases, find_acdc_patients
from glcl_core.data.cases import Case, LoadOptions, load_case, normalise_size
from glcl_core.data.decathlon import decathlon_cases
from glcl_core.data.files import check_errors_mode, is_dir, is_file, is_nifti, nifti_stem, visible_children
from glcl_core.data.folder import folder_cases
from glcl_core.data.nifti import channel_listing, label_values, open_nifti, read_label_array
from glcl_core.data.preprocess import target_spacing
from glcl_core.data.volume import DataError, Volume


# ----------------------------------------------------------------------------------------------- layouts


def detect_layout(path: str | os.PathLike, errors: str = "raise") -> str:
    """``"decathlon"``, ``"acdc"``, ``"folder"`` or ``"file"``; DataError for a missing, empty or unreadable path
    or one that is neither a folder nor a regular file (``/dev/null``, a device, a pipe)."""
    return layout_and_patients(Path(path), errors)[0]


def layout_and_patients(root: Path, errors: str = "raise") -> tuple[str, list[Path]]:
    """:func:`detect_layout` and, for ACDC, the patient folders found (searched once)."""
    try:
        exists = root.exists()
    except OSError as err:
        raise DataError(f"{root}: cannot access ({err.strerror or err})") from err
    if not exists:
        raise DataError(f"{root}: no such file or folder")
    if not is_dir(root):
        if not is_file(root):
            raise DataError(f"{root}: not a data folder (a device or other special file); give the folder that "
                            f"holds the NIfTI files")
        if not is_nifti(root):
            raise DataError(f"{root}: not a NIfTI file (.nii or .nii.gz); give the data folder")
        return "file", []
    if not visible_children(root):
        raise DataError(f"{root}: folder is empty")
    if is_file(root / "dataset.json"):
        return "decathlon", []
    patients = find_acdc_patients(root, errors=errors)
    return ("acdc", patients) if patients else ("folder", [])


def find_cases(
    path: str | os.PathLike, frames: Sequence[str] | str = ACDC_FRAMES, with_labels: bool | None = None,
    errors: str = "raise",
) -> list[Case]:
    """All cases under ``path`` (any supported layout), sorted by name.

    ``with_labels``: None pairs labels where they exist, True requires one for every image (DataError naming the
    image otherwise), False ignores labels. ``errors="skip"``: a bad ``dataset.json`` entry or an unusable ACDC
    patient folder warns and is left out instead of raising DataError.
    """
    check_errors_mode(errors)
    root = Path(path)
    layout, patients = layout_and_patients(root, errors)
    if layout == "file":
        cases = [Case(nifti_stem(root), root, None, "file", nifti_stem(root))]
    elif layout == "decathlon":
        cases = decathlon_cases(root, errors=errors)
    elif layout == "acdc":
        cases = acdc_cases(root, frames, errors=errors, patients=patients)
    else:
        cases = folder_cases(root)
    if not cases:
        raise DataError(f"{root}: no images found ({layout} layout)")
    return apply_label_policy(sorted(cases, key=lambda c: c.name), with_labels)


def apply_label_policy(cases: list[Case], with_labels: bool | None) -> list[Case]:
    if with_labels is False:
        return [replace(c, label=None) for c in cases]
    if with_labels is True:
        missing = [c.image for c in cases if c.label is None]
        if missing:
            shown = ", ".join(str(p) for p in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DataError(f"with_labels=True but {len(missing)} image(s) have no label: {shown}")
    return cases


def load_volumes(
    path: str | os.PathLike,
    spacing: float | tuple[float, float] | str | None = "fit",
    size: int | tuple[int, int] | None = (128, 128),
    *,
    channel: int | None = None,
    frames: Sequence[str] | str = ACDC_FRAMES,
    with_labels: bool | None = None,
    min_slices: int = 1,
    n_partitions: int | None = None,
    max_volumes: int | None = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    errors: str = "raise",
) -> list[Volume]:
    """Load every volume under ``path`` (Decathlon, ACDC, plain folder or one file), preprocessed.

    Args:
        path: data root, ACDC patient folder, plain folder or one NIfTI file. Only read, never written.
        spacing: in-plane target spacing in mm, a number or ``(y, x)``; ``"fit"`` (default) picks per volume the
            isotropic spacing at which the whole field of view fits ``size``; None keeps the stored spacing.
            The slice axis is never resampled.
        size: in-plane output ``(H, W)`` (or one int); centre crop/pad after resampling. None: no crop/pad.
        channel: channel / frame of 4D images (or the channel file of nnU-Net style ``case_0000`` images). None:
            channel 0 for Decathlon / nnU-Net data (the first ``modality`` / ``channel_names``), an error listing the
            channels for other multi-channel images.
        frames: ACDC frames to load, ``"ED"`` and/or ``"ES"``.
        with_labels: None loads labels where they exist, True requires them, False ignores them.
        min_slices, n_partitions: volumes with fewer slices than ``max(min_slices, n_partitions)`` are an error.
        max_volumes: load only the first ``max_volumes`` cases (sorted by name), e.g. for a quick look.
        percentiles: intensity clip percentiles before scaling to ``[0, 1]``.
        errors: ``"raise"`` (default) or ``"skip"``: warn (naming the file) and drop volumes that raise DataError,
            and likewise bad ``dataset.json`` entries and unusable ACDC patient folders.
    Returns:
        Volumes sorted by name: ``image (Z, H, W) float32`` in [0, 1], ``label (Z, H, W) int64`` or None,
        ``spacing (z, y, x)`` mm after preprocessing, ``source`` the image path, ``meta`` with ``subject``,
        ``layout``, ``frame``, ``channel`` (of multi-channel data), the data set's ``labels`` ``{value: name}``
        and ``modality`` (Decathlon / nnU-Net), the original shape/spacing/orientation, and for Dice at native
        resolution ``native_grid`` (:class:`~glcl_core.data.preprocess.NativeGrid`), ``orientation`` and, for
        labels of at most ``NATIVE_LABEL_MAX_VOXELS`` voxels, ``native_label`` ``(Z, H0, W0)`` (see
        :func:`glcl_core.data.cases.native_label`).
    Raises:
        DataError naming the file for any unusable input (see the module docstring).
    """
    check_errors_mode(errors)
    required = max(int(min_slices), int(n_partitions or 1))
    options = LoadOptions(spacing=spacing, size=normalise_size(size), channel=channel, min_slices=required,
                          percentiles=tuple(percentiles))
    target_spacing((1.0, 1.0), (1, 1), spacing, options.size)  # validate the argument before any reading
    cases = find_cases(path, frames=frames, with_labels=with_labels, errors=errors)
    if max_volumes is not None:
        cases = cases[: int(max_volumes)]
    volumes = []
    for case in cases:
        try:
            volumes.append(load_case(case, options))
        except DataError as err:
            if errors == "raise":
                raise
            warnings.warn(f"skipped: {err}", stacklevel=2)
    if not volumes:
        raise DataError(f"{path}: no volume could be loaded")
    return volumes


# ----------------------------------------------------------------------------------------------- summary


def summarize(volumes: Sequence[Volume]) -> str:
    """A short table: count, in-plane shapes, slices, spacing ranges, label classes with voxel fractions."""
    if not volumes:
        return "0 volumes"
    n_labelled = sum(v.label is not None for v in volumes)
    slices = np.array([v.n_slices for v in volumes])
    spacings = np.array([v.spacing for v in volumes], dtype=float)
    shapes = sorted({tuple(v.image.shape[1:]) for v in volumes})
    rows = [
        ("volumes", f"{len(volumes)} ({n_labelled} labelled)"),
        ("in-plane H x W", ", ".join(f"{h} x {w}" for h, w in shapes[:4]) + (" ..." if len(shapes) > 4 else "")),
        ("slices Z", f"{slices.min()} .. {slices.max()} (median {np.median(slices):g}, total {slices.sum()})"),
    ]
    for axis, name in enumerate("zyx"):
        rows.append((f"spacing {name} (mm)", f"{spacings[:, axis].min():.2f} .. {spacings[:, axis].max():.2f}"))
    if n_labelled:
        counts: dict[int, int] = {}
        for v in volumes:
            if v.label is not None:
                values, n = np.unique(v.label, return_counts=True)
                for value, count in zip(values.tolist(), n.tolist()):
                    counts[value] = counts.get(value, 0) + count
        total = sum(counts.values())
        rows.append(("label classes", "  ".join(f"{k}: {100 * c / total:.1f}%" for k, c in sorted(counts.items()))))
    channels = sorted({v.meta.get("channel") for v in volumes if (v.meta or {}).get("channel") is not None})
    if channels:  # multi-channel data: say which channel was taken and how to choose another
        names = volumes[0].meta.get("modality") if isinstance(volumes[0].meta.get("modality"), dict) else {}
        listing = f"of {channel_listing(sorted(int(k) for k in names if str(k).isdigit()), names)}; " if names else ""
        rows.append(("channel", f"{channel_listing(channels, names)} ({listing}choose with channel= / --channel)"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


# ----------------------------------------------------------------------------------------------- classes


def n_classes_of(volumes: Sequence[Volume]) -> int | None:
    """Segmentation classes (background included) of loaded volumes: one more than the largest label value the
    data set declares (dataset.json ``labels``, kept in ``meta["labels"]``) or any label map holds; None when there
    are neither. E.g. ``make_config(model={"n_classes": n_classes_of(volumes)})``."""
    tops = [max(int(k) for k in v.meta["labels"]) for v in volumes if (v.meta or {}).get("labels")]
    tops += [int(v.label.max()) for v in volumes if v.label is not None and v.label.size]
    return max(tops) + 1 if tops else None


def count_classes(path: str | os.PathLike, frames: Sequence[str] | str = ACDC_FRAMES) -> int | None:
    """:func:`n_classes_of` for the data under ``path`` without loading the images: from the dataset.json
    ``labels`` when there is one, else from the largest value of the label maps (each read once). None for data
    without labels. DataError naming the file for an unreadable label."""
    cases = find_cases(path, frames=frames)
    declared = [max(c.allowed_labels) for c in cases if c.allowed_labels]
    if declared:
        return max(declared) + 1
    top = None
    for case in cases:
        if case.label is not None:
            values = label_values(read_label_array(open_nifti(case.label), case.label))
            top = max(top or 0, int(values.max()) if values.size else 0)
    return None if top is None else top + 1
