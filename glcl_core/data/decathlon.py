"""The Medical Segmentation Decathlon layout (and nnU-Net v2's): its cases found from ``dataset.json`` and
``imagesTr/`` / ``labelsTr/``, with the label values and channel names the data set declares.

``dataset.json`` (``labels``, ``modality``, ``training`` list of ``{"image", "label"}``), ``imagesTr/``,
``labelsTr/``. Multi-channel images ``(X, Y, Z, C)`` give one channel (``channel``, default 0 = the first modality).
Label values must be keys of ``labels``. Paths in ``dataset.json`` that are not strings or point outside the data
folder raise :class:`DataError` naming the entry (with ``errors="skip"`` the entry warns and is left out).

nnU-Net v2 data sets are read too: ``dataset.json`` with ``"labels": {"background": 0, ...}`` and
``"channel_names"``, one file per channel (``case_0000.nii.gz``, ``case_0001.nii.gz``) paired with
``labelsTr/case.nii.gz``: the channels of one case form one volume (``channel`` picks the file).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from glcl_core.data.cases import Case
from glcl_core.data.files import find_file, is_dir, is_file, is_visible, nifti_stem, skip_or_raise
from glcl_core.data.folder import group_channel_files, paired_subfolders
from glcl_core.data.volume import DataError


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
