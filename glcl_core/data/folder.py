"""The plain-folder layout: NIfTI images paired with their label files by name, in one folder or in ``images/`` +
``labels/`` subfolders, nnU-Net style channel files (``case_0000``, ``case_0001``) grouped into one case.

``case.nii.gz`` with an optional ``case_label`` / ``_labels`` / ``_seg`` / ``_segmentation`` / ``_gt`` / ``_mask``
partner, or ``images/`` + ``labels/`` subfolders with matching names. Images without labels give ``label=None``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from glcl_core.data.cases import Case
from glcl_core.data.files import is_dir, list_nifti, nifti_stem
from glcl_core.data.volume import DataError

LABEL_STEM = re.compile(r"^(?P<stem>.+?)[_\-.](?:label|labels|seg|segmentation|gt|mask)$", re.IGNORECASE)
CHANNEL_STEM = re.compile(r"^(?P<stem>.+)_\d{4}$")  # nnU-Net style "case_0000" images
IMAGE_DIRS = ("images", "image", "imgs", "imagesTr")
LABEL_DIRS = ("labels", "label", "masks", "mask", "segmentations", "gt", "labelsTr")


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
