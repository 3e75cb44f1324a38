"""The ACDC layout: patient folders found (up to three levels down), ``Info.cfg`` read for the ED / ES frame
numbers, and one case per chosen frame.

``patientXXX/`` folders with ``patientXXX_frameYY.nii.gz``, ``patientXXX_frameYY_gt.nii.gz`` and ``Info.cfg``
(``ED: 1``, ``ES: 12``). The ED and/or ES frames are loaded (``frames``); the 4D cine ``patientXXX_4d.nii.gz`` never
is. The path may be the data root (patients up to three folders down, e.g. ``training/``, ``testing/``) or one
patient folder. A patient folder with a problem raises :class:`DataError` naming the file (with ``errors="skip"``
it warns and is left out).
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Sequence

from glcl_core.data.cases import Case
from glcl_core.data.files import find_file, is_dir, is_file, list_nifti, nifti_stem, skip_or_raise, visible_children
from glcl_core.data.volume import DataError

ACDC_PATIENT_DIR = re.compile(r"^patient\d+$", re.IGNORECASE)
ACDC_FRAME_FILE = re.compile(r"^(?P<patient>patient\d+)_frame(?P<frame>\d+)\.nii(\.gz)?$", re.IGNORECASE)
ACDC_FRAMES = ("ED", "ES")


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
