"""Reading NIfTI scans from the folder layouts users bring, one volume at a time.

Layouts (detected in this order):

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

import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import nibabel as nib
import numpy as np

from glcl_core.data.preprocess import (
    Orientation,
    canonical_orientation,
    intensity_range,
    native_grid,
    reorient,
    reoriented_affine,
    resample_image,
    resample_label,
    target_spacing,
)
from glcl_core.data.volume import DataError, Volume

LABEL_STEM = re.compile(r"^(?P<stem>.+?)[_\-.](?:label|labels|seg|segmentation|gt|mask)$", re.IGNORECASE)
CHANNEL_STEM = re.compile(r"^(?P<stem>.+)_\d{4}$")  # nnU-Net style "case_0000" images
ACDC_PATIENT_DIR = re.compile(r"^patient\d+$", re.IGNORECASE)
ACDC_FRAME_FILE = re.compile(r"^(?P<patient>patient\d+)_frame(?P<frame>\d+)\.nii(\.gz)?$", re.IGNORECASE)
ACDC_FRAMES = ("ED", "ES")
IMAGE_DIRS = ("images", "image", "imgs", "imagesTr")
LABEL_DIRS = ("labels", "label", "masks", "mask", "segmentations", "gt", "labelsTr")
AFFINE_TOLERANCE_VOXELS = 0.25  # image/label grids may differ by at most this fraction of a voxel
SLAB_VOXELS = 16_000_000  # voxels read at a time: bounds the temporaries on big CT volumes
# Native-resolution labels up to this many voxels are kept in Volume.meta["native_label"] (uint8: 1 byte each);
# larger ones (e.g. CT) are re-read from meta["label_path"] when a native-resolution Dice needs them.
NATIVE_LABEL_MAX_VOXELS = 8_000_000
# Largest array one image or label may need in memory (one channel, at least float32 per voxel), checked from the
# header before reading: a corrupt header can claim terabytes. Raise it with the environment variable.
MAX_VOLUME_BYTES_ENV = "GLCL_MAX_VOLUME_BYTES"
DEFAULT_MAX_VOLUME_BYTES = 4 * 1024 ** 3
MIN_INPLANE_VOXELS = 4  # fewer voxels along an in-plane axis: a thin slab, not a volume
IMPLAUSIBLE_SLICE_MM = 100.0  # slice spacing above this warns (a header in microns, or a wrong pixdim)
IMPLAUSIBLE_ANISOTROPY = 50.0  # slice spacing above this multiple of the in-plane spacing warns
ERROR_MODES = ("raise", "skip")


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


# ----------------------------------------------------------------------------------------------- file names


def is_visible(path: Path) -> bool:
    """False for hidden files, macOS resource forks (``._name``) and zip debris folders (``__MACOSX``)."""
    return not path.name.startswith(".") and path.name != "__MACOSX"


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return is_visible(path) and (name.endswith(".nii.gz") or name.endswith(".nii")) and is_file(path)


def is_file(path: Path) -> bool:
    """``path.is_file()``; DataError naming the path when it cannot be looked at (e.g. permission denied)."""
    try:
        return path.is_file()
    except OSError as err:
        raise DataError(f"{path}: cannot access ({err.strerror or err})") from err


def is_dir(path: Path) -> bool:
    """``path.is_dir()``; DataError naming the path when it cannot be looked at (e.g. permission denied)."""
    try:
        return path.is_dir()
    except OSError as err:
        raise DataError(f"{path}: cannot access ({err.strerror or err})") from err


def nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def children(folder: Path) -> list[Path]:
    """Entries of ``folder``; DataError naming it when it cannot be listed (permission denied, not a folder)."""
    try:
        return list(folder.iterdir())
    except OSError as err:
        raise DataError(f"{folder}: cannot list the folder ({err.strerror or err})") from err


def list_nifti(folder: Path) -> list[Path]:
    return sorted(p for p in children(folder) if is_nifti(p))


def visible_children(folder: Path) -> list[Path]:
    return sorted(p for p in children(folder) if is_visible(p))


def check_errors_mode(errors: str) -> None:
    if errors not in ERROR_MODES:
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")


def skip_or_raise(err: DataError, errors: str) -> None:
    """Raise ``err`` (``errors="raise"``) or warn that what it names is skipped (``errors="skip"``)."""
    if errors == "raise":
        raise err
    warnings.warn(f"skipped: {err}", stacklevel=3)


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


def read_dataset_json(root: Path) -> dict:
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{meta_path}: cannot read dataset.json ({err})") from err
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: dataset.json must hold a JSON object")
    return meta


def declared_labels(meta: dict, meta_path: Path) -> frozenset[int]:
    """Label values of a dataset.json: MSD style ``{"0": "background"}`` or nnU-Net v2 ``{"background": 0}``."""
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{meta_path}: dataset.json has no 'labels' mapping")
    try:
        if all(str(k).strip().lstrip("-").isdigit() for k in labels):
            return frozenset(int(k) for k in labels)
        values: list[int] = []
        for v in labels.values():  # nnU-Net v2 regions may list several values
            values.extend(int(x) for x in (v if isinstance(v, list) else [v]))
        return frozenset(values)
    except (TypeError, ValueError) as err:
        raise DataError(f"{meta_path}: cannot read label values from 'labels' {labels!r}") from err


def label_names(meta: dict) -> dict[int, str]:
    """``{value: name}`` of a dataset.json's ``labels``, MSD style (``{"0": "background"}``) or nnU-Net v2 style
    (``{"background": 0}``; a region listing several values names each of them), sorted by value; ``{}`` when the
    mapping is missing or unreadable."""
    labels = meta.get("labels")
    if not isinstance(labels, dict):
        return {}
    names: dict[int, str] = {}
    try:
        if all(str(k).strip().lstrip("-").isdigit() for k in labels):
            names = {int(k): str(v) for k, v in labels.items()}
        else:
            for name, v in labels.items():
                for x in (v if isinstance(v, list) else [v]):
                    names.setdefault(int(x), str(name))
    except (TypeError, ValueError):
        return {}
    return dict(sorted(names.items()))


def is_nnunet_v2(meta: dict) -> bool:
    """An nnU-Net v2 dataset.json (``channel_names`` / ``file_ending``): one file per channel, ``case_0000``."""
    return "channel_names" in meta or "file_ending" in meta


def decathlon_cases(root: Path, errors: str = "raise") -> list[Case]:
    meta_path = root / "dataset.json"
    meta = read_dataset_json(root)
    allowed = declared_labels(meta, meta_path)
    modalities = meta.get("modality") or meta.get("channel_names") or {}
    extra = {"modality": dict(modalities) if isinstance(modalities, dict) else {}, "dataset": meta.get("name"),
             "labels": label_names(meta)}
    training = meta.get("training")
    if isinstance(training, list) and training:
        pairs = decathlon_listed_pairs(root, training, meta_path, errors)
        if not pairs:
            raise DataError(f"{meta_path}: no usable entry in the 'training' list")
    else:  # no list (nnU-Net v2): pair imagesTr/labelsTr by name
        image_dir, label_dir = root / "imagesTr", root / "labelsTr"
        pairs = paired_subfolders(image_dir, label_dir if is_dir(label_dir) else None) if is_dir(image_dir) else []
        if not pairs:
            raise DataError(f"{meta_path}: no 'training' list and no images in {image_dir}")
    return [
        Case(name, image, label, "decathlon", name, allowed_labels=allowed, default_channel=0, extra=extra,
             channel_files=files)
        for name, image, label, files in group_channel_files(pairs, all_channel_stems=is_nnunet_v2(meta))
    ]


def decathlon_listed_pairs(root: Path, training: list, meta_path: Path,
                           errors: str = "raise") -> list[tuple[Path, Path | None]]:
    """``(image, label or None)`` of each usable ``training`` entry; a bad entry (path not a string, outside the
    data folder, file missing) raises DataError naming it, or with ``errors="skip"`` warns and is left out."""
    pairs = []
    for entry in training:
        try:
            pairs.extend(decathlon_listed_pair(root, entry, meta_path))
        except DataError as err:
            skip_or_raise(err, errors)
    return pairs


def decathlon_listed_pair(root: Path, entry, meta_path: Path) -> list[tuple[Path, Path | None]]:
    """One ``training`` entry as ``[(image, label or None)]``; empty for a hidden file (macOS debris). An image
    listed as ``case.nii.gz`` but stored as channel files ``case_0000.nii.gz``, ... (nnU-Net v1) gives one pair per
    channel file (grouped into one case by :func:`group_channel_files`)."""
    if isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, dict) or "image" not in entry:
        raise DataError(f"{meta_path}: 'training' entry {entry!r} has no 'image'")
    image = listed_path(root, entry, "image", meta_path)
    if not is_visible(image):
        return []
    label = listed_path(root, entry, "label", meta_path) if entry.get("label") is not None else None
    if label is not None and not is_file(label):
        raise DataError(f"{label}: listed in {meta_path} but missing")
    if is_file(image):
        return [(image, label)]
    channels = channel_siblings(image)
    if not channels:
        raise DataError(f"{image}: listed in {meta_path} but missing")
    return [(channel, label) for channel in channels]


def channel_siblings(image: Path) -> list[Path]:
    """``case_0000.nii.gz``, ``case_0001.nii.gz``, ... beside a missing ``case.nii.gz`` (nnU-Net's channel files)."""
    stem, found = nifti_stem(image), []
    for k in range(10_000):
        candidate = find_file(image.parent, f"{stem}_{k:04d}") if is_dir(image.parent) else None
        if candidate is None:
            break
        found.append(candidate)
    return found


def listed_path(root: Path, entry: dict, key: str, meta_path: Path) -> Path | None:
    """The file ``entry[key]`` names, inside ``root``; DataError naming the entry for a value that is not a path
    string or that leads outside the data folder (``..`` or an absolute path). None for an empty label."""
    value = entry[key]
    if not isinstance(value, str):
        raise DataError(f"{meta_path}: 'training' entry {entry!r}: '{key}' must be a path string, got "
                        f"{type(value).__name__} {value!r}")
    if not value.strip():
        if key == "label":
            return None
        raise DataError(f"{meta_path}: 'training' entry {entry!r}: '{key}' is empty")
    path = Path(os.path.normpath(root / value))
    inside = Path(os.path.normpath(root.absolute()))
    if not Path(os.path.normpath(root.absolute() / value)).is_relative_to(inside):
        raise DataError(f"{meta_path}: 'training' entry {entry!r}: '{key}' {value!r} points outside the data "
                        f"folder {inside}; paths must be relative to it (e.g. './imagesTr/case.nii.gz')")
    return path


def find_acdc_patients(root: Path, max_depth: int = 3, errors: str = "raise") -> list[Path]:
    """Patient folders at ``root`` itself or up to ``max_depth`` levels below (hidden folders skipped).

    An unreadable patient folder (``patientXXX``) raises DataError naming it, or with ``errors="skip"`` warns and is
    left out; another unreadable subfolder (e.g. ``lost+found``) only warns, as it is searched, not needed.
    """
    if is_acdc_patient(root):
        return [root]
    found, frontier = [], [root]
    for depth in range(max_depth):
        next_frontier = []
        for folder in frontier:
            try:
                entries = visible_children(folder)
            except DataError as err:
                if depth == 0:  # the data folder itself
                    raise
                warnings.warn(f"not searched: {err}", stacklevel=2)
                continue
            for child in entries:
                try:
                    if not is_dir(child):
                        continue
                    patient = is_acdc_patient(child)
                except DataError as err:
                    if ACDC_PATIENT_DIR.match(child.name):
                        skip_or_raise(err, errors)
                    else:
                        warnings.warn(f"not searched: {err}", stacklevel=2)
                    continue
                if patient:
                    found.append(child)
                else:
                    next_frontier.append(child)
        frontier = next_frontier
    return sorted(found)


def is_acdc_patient(folder: Path) -> bool:
    if not ACDC_PATIENT_DIR.match(folder.name) or not is_dir(folder):
        return False
    return is_file(folder / "Info.cfg") or any(ACDC_FRAME_FILE.match(p.name) for p in list_nifti(folder))


def parse_info_cfg(path: Path) -> dict[str, str]:
    """``Info.cfg`` as a dict (``{"ED": "1", "ES": "12", "Group": "DCM", ...}``)."""
    if not is_file(path):
        raise DataError(f"{path}: Info.cfg missing (needed to find the ED/ES frames)")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise DataError(f"{path}: cannot read Info.cfg ({err})") from err
    entries = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            entries[key.strip()] = value.strip()
    return entries


def normalise_frames(frames: Sequence[str] | str) -> tuple[str, ...]:
    chosen = (frames,) if isinstance(frames, str) else tuple(frames)
    chosen = tuple(str(f).upper() for f in chosen)
    if not chosen or any(f not in ACDC_FRAMES for f in chosen):
        raise ValueError(f"frames must be a non-empty subset of {ACDC_FRAMES}, got {frames!r}")
    return tuple(dict.fromkeys(chosen))


def acdc_cases(root: Path, frames: Sequence[str] | str, errors: str = "raise",
               patients: list[Path] | None = None) -> list[Case]:
    """The chosen frames of every patient (``patients``: the folders, when already searched); a patient folder with
    a problem (Info.cfg missing or unreadable, a frame missing) raises DataError naming the file, or with
    ``errors="skip"`` warns and is left out."""
    chosen = normalise_frames(frames)
    cases = []
    for patient_dir in patients if patients is not None else find_acdc_patients(root, errors=errors):
        try:
            cases.extend(acdc_patient_cases(patient_dir, chosen))
        except DataError as err:
            skip_or_raise(err, errors)
    return cases


def acdc_patient_cases(patient_dir: Path, chosen: tuple[str, ...]) -> list[Case]:
    info_path = patient_dir / "Info.cfg"
    info = parse_info_cfg(info_path)
    patient = patient_dir.name
    cases = []
    for frame_name in chosen:
        if frame_name not in info:
            raise DataError(f"{info_path}: no '{frame_name}:' line")
        try:
            frame_number = int(info[frame_name])
        except ValueError as err:
            raise DataError(f"{info_path}: '{frame_name}: {info[frame_name]}' is not a frame number") from err
        image = find_file(patient_dir, f"{patient}_frame{frame_number:02d}")
        if image is None:
            raise DataError(f"{patient_dir / f'{patient}_frame{frame_number:02d}.nii.gz'}: missing "
                            f"({frame_name} frame named in {info_path})")
        label = find_file(patient_dir, f"{patient}_frame{frame_number:02d}_gt")
        cases.append(Case(nifti_stem(image), image, label, "acdc", patient, frame=frame_name,
                          extra={"frame_number": frame_number, "group": info.get("Group")}))
    return cases


def find_file(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        candidate = folder / f"{stem}{suffix}"
        if is_file(candidate):
            return candidate
    return None


def folder_cases(root: Path) -> list[Case]:
    image_dir = next((root / d for d in IMAGE_DIRS if is_dir(root / d)), None)
    label_dir = next((root / d for d in LABEL_DIRS if is_dir(root / d)), None)
    if image_dir is not None:
        pairs = paired_subfolders(image_dir, label_dir)
    else:
        pairs = paired_files(list_nifti(root))
    if not pairs:
        raise DataError(f"{root}: no NIfTI images (.nii / .nii.gz) found")
    return [Case(name, image, label, "folder", name, channel_files=files)
            for name, image, label, files in group_channel_files(pairs)]


def label_key(stem: str) -> str | None:
    """The image stem a label file belongs to (``case1_seg`` -> ``case1``), None if the name is not a label's."""
    match = LABEL_STEM.match(stem)
    return match.group("stem") if match else None


def paired_files(files: Iterable[Path]) -> list[tuple[Path, Path | None]]:
    """Pairs from one folder holding both images and ``<stem>_label`` / ``_seg`` / ``_gt`` / ``_mask`` files."""
    labels, images = {}, []
    for path in files:
        key = label_key(nifti_stem(path))
        if key is not None:
            labels[key] = path
        else:
            images.append(path)
    return [(image, match_label(nifti_stem(image), labels)) for image in images]


def paired_subfolders(image_dir: Path, label_dir: Path | None) -> list[tuple[Path, Path | None]]:
    """Pairs from ``images/`` + ``labels/`` folders: same stem, or the stem plus a label suffix."""
    labels = {}
    if label_dir is not None:
        for path in list_nifti(label_dir):
            stem = nifti_stem(path)
            labels.setdefault(stem, path)
            key = label_key(stem)
            if key is not None:
                labels.setdefault(key, path)
    return [(image, match_label(nifti_stem(image), labels)) for image in list_nifti(image_dir)]


def match_label(image_stem: str, labels: dict[str, Path]) -> Path | None:
    if image_stem in labels:
        return labels[image_stem]
    channel = CHANNEL_STEM.match(image_stem)
    return labels.get(channel.group("stem")) if channel else None


def group_channel_files(pairs: list[tuple[Path, Path | None]], all_channel_stems: bool = False
                        ) -> list[tuple[str, Path, Path | None, dict[int, Path] | None]]:
    """``(name, image, label, channel_files)`` per case: nnU-Net style channel files (``case_0000``,
    ``case_0001`` whose label is ``case``) become one case ``case`` with ``channel_files = {0: ..., 1: ...}`` and
    ``image`` the lowest channel's file, so the channels of one scan are one volume (one subject), never several.

    A ``_NNNN`` image is grouped when its label was found under the name without the suffix, or always with
    ``all_channel_stems`` (an nnU-Net v2 dataset.json). Other images are their own case (``channel_files`` None).
    """
    groups: dict[str, dict] = {}
    order: list[tuple[str, object]] = []
    for image, label in pairs:
        stem = nifti_stem(image)
        match = CHANNEL_STEM.match(stem)
        base = match.group("stem") if match else None
        by_label = label is not None and base is not None and base in (nifti_stem(label), label_key(nifti_stem(label)))
        if base is None or not (by_label or all_channel_stems):
            order.append(("case", (stem, image, label, None)))
            continue
        if base not in groups:
            groups[base] = {"files": {}, "label": label}
            order.append(("group", base))
        groups[base]["files"][int(stem[len(base) + 1:])] = image
        groups[base]["label"] = groups[base]["label"] or label
    out = []
    for kind, item in order:
        if kind == "case":
            out.append(item)
        else:
            files = dict(sorted(groups[item]["files"].items()))
            out.append((item, next(iter(files.values())), groups[item]["label"], files))
    return out


# ----------------------------------------------------------------------------------------------- reading


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


# ----------------------------------------------------------------------------------------------- loading


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
        # for Dice at native resolution (glcl_core.train.loops.evaluate): the in-plane map between the grids, the
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
        :func:`native_label`).
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
