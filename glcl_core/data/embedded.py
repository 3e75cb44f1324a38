"""The embedded data set: pseudo-subjects made from the ICBM152 2009 template that ships inside nilearn's wheel,
built once into a cached Decathlon-layout folder by :func:`embedded_dataset`.

One underlying anatomy (the MNI ICBM152 2009a nonlinear symmetric T1 template and its grey/white matter probability
maps, 1 mm, skull-stripped), varied per pseudo-subject by

* a small rotation, anisotropic scaling and translation, plus a smooth random displacement field (a few mm),
  applied identically to the T1 and the probability maps;
* a different field of view along the slice axis (axial, inferior->superior): 70-100 % of the brain's extent,
  starting lower or higher, and a different slice thickness (2-4 mm, slab-averaged, so thick slices are blurred
  along z like a real thick-slice acquisition) and in-plane spacing (1.8-2.2 mm);
* gamma, a smooth multiplicative bias field and Rician noise;
* a different storage orientation (axis flips and orders, with matching affines).

The ``varied`` preset (:data:`PRESETS`) adds what one template lacks between real subjects: larger non-linear
shape changes, enlarged ventricles and deep structures (a radial expansion about the ventricles, as with age or
atrophy), a per-subject tissue contrast (CSF and grey-matter intensities relative to white matter, as between
scanners and sequences) and a fine multiplicative texture. The ``standard`` preset leaves these off and is the data
set the book's numbers were first measured on. The ``multicontrast`` preset keeps the varied shapes and replaces the
template's T1 contrast by a tissue contrast drawn per subject from T1-, T2- and PD-like families
(:data:`CONTRAST_FAMILIES`): one labelled volume then shows one of three contrasts, as in multi-site data.

Labels: 0 background, 1 CSF (approximate: brain mask minus GM minus WM), 2 grey matter, 3 white matter, by argmax
of the warped maps. Honest limits: one anatomy, smooth average texture, approximate CSF, no manual labels.

The folder is written in the Decathlon layout (``dataset.json``, ``imagesTr/``, ``labelsTr/``), built once per
(parameters, ``n_subjects``, ``seed``) in a temporary folder and renamed into place when complete.

The generator of one pseudo-subject: :mod:`glcl_core.data.synthesis`; its ranges, :data:`PRESETS` and
:data:`CONTRAST_FAMILIES`: :mod:`glcl_core.data.presets`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np

from glcl_core.data.presets import GeneratorParams, generator_params
from glcl_core.data.synthesis import load_template, make_subject, template_paths

GENERATOR_VERSION = 1  # bump when the generator's output changes for the same parameters
LABEL_NAMES = {"0": "background", "1": "CSF (approximate)", "2": "grey matter", "3": "white matter"}
STALE_BUILD_SECONDS = 3600  # temporary build folders older than this are leftovers of interrupted builds
LICENCE = (
    "Derived from the MNI ICBM152 2009a nonlinear symmetric template (Fonov et al., NeuroImage 2011 and 2009), "
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, "
    "McGill University, as redistributed in the nilearn wheel. Use, copying and distribution are permitted provided "
    "this copyright notice appears in all copies."
)


# ----------------------------------------------------------------------------------------------- the folder


def default_root() -> Path:
    """``$GLCL_DATA_DIR``, else ``$XDG_CACHE_HOME/glcl_core``, else ``~/.cache/glcl_core``."""
    if os.environ.get("GLCL_DATA_DIR"):
        return Path(os.environ["GLCL_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "glcl_core"


def dataset_key(params: GeneratorParams, n_subjects: int, seed: int) -> str:
    """Folder name: changes with the generator version, its parameters, the template files, n_subjects and seed."""
    sizes = {kind: path.stat().st_size for kind, path in template_paths().items()}
    fields = asdict(params)
    if not fields["contrast_families"]:  # added later: presets without it keep their cached folders
        del fields["contrast_families"]
    blob = json.dumps({"version": GENERATOR_VERSION, "params": fields, "template_bytes": sizes,
                       "n_subjects": n_subjects, "seed": seed}, sort_keys=True)
    return f"icbm152_n{n_subjects}_seed{seed}_{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def is_complete(folder: Path, n_subjects: int) -> bool:
    meta = folder / "dataset.json"
    if not meta.is_file():
        return False
    try:
        return len(json.loads(meta.read_text())["training"]) == n_subjects
    except (OSError, ValueError, KeyError, TypeError):
        return False


def embedded_dataset(root: str | os.PathLike | None = None, n_subjects: int = 20, seed: int = 0,
                     params: GeneratorParams | str | None = None) -> Path:
    """Path of the embedded Decathlon-layout folder, built on first use (about 1 s per subject on one core).

    Args:
        root: cache folder (default :func:`default_root`); the data set lives in a versioned subfolder.
        n_subjects: number of pseudo-subjects (``icbm_000`` ...).
        seed: same seed, same files (byte for byte); subject ``i`` does not depend on ``n_subjects``.
        params: generator ranges, or the name of one of :data:`PRESETS` (default ``standard``).
    """
    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    params = generator_params(params)
    base = Path(root).expanduser() if root is not None else default_root()
    final = base / dataset_key(params, n_subjects, seed)
    if is_complete(final, n_subjects):
        return final
    base.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(base)
    if final.exists() and not is_complete(final, n_subjects):  # our builds appear whole or not at all: not ours
        shutil.rmtree(final)
    building = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=base))
    try:
        write_dataset(building, n_subjects, seed, params)
        os.chmod(building, 0o755)
        try:
            os.rename(building, final)  # atomic: readers see a complete folder or none
        except OSError:
            if not is_complete(final, n_subjects):  # not a concurrent builder's finished copy: a real error
                raise
            shutil.rmtree(building, ignore_errors=True)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return final


def remove_stale_builds(base: Path) -> None:
    """Delete temporary folders left by interrupted builds (old enough not to belong to a running one)."""
    now = time.time()
    for leftover in base.glob(".icbm152_*.building-*"):
        try:
            if now - leftover.stat().st_mtime > STALE_BUILD_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def write_dataset(folder: Path, n_subjects: int, seed: int, params: GeneratorParams) -> None:
    """Write ``imagesTr/``, ``labelsTr/`` and, last, ``dataset.json`` into ``folder``."""
    (folder / "imagesTr").mkdir()
    (folder / "labelsTr").mkdir()
    template = load_template()
    training, drawn = [], {}
    for index in range(n_subjects):
        name = f"icbm_{index:03d}"
        subject = make_subject(template, index, seed, params)
        save_nifti(subject["image"], subject["affine"], folder / "imagesTr" / f"{name}.nii.gz")
        save_nifti(subject["label"], subject["affine"], folder / "labelsTr" / f"{name}.nii.gz")
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
        drawn[name] = subject["params"]
    meta = {
        "name": "ICBM152 pseudo-subjects",
        "description": "Pseudo-subjects warped from one brain template (glcl_core embedded data set); "
                       "labels by argmax of warped tissue probability maps, CSF approximate.",
        "reference": "Fonov et al., NeuroImage 54(1) 2011; Fonov et al., NeuroImage 47 S102 2009",
        "licence": LICENCE,
        "tensorImageSize": "3D",
        # one MR channel: T1 contrast, or per subject a T1-, T2- or PD-like one (generator.subjects says which)
        "modality": {"0": "MR (T1-, T2- or PD-like per subject)" if params.contrast_families else "T1"},
        "labels": LABEL_NAMES,
        "numTraining": n_subjects,
        "numTest": 0,
        "training": training,
        "test": [],
        "generator": {"version": GENERATOR_VERSION, "seed": seed, "params": asdict(params), "subjects": drawn},
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1))


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
