"""The embedded data set: pseudo-subjects made from the ICBM152 2009 template that ships inside nilearn's wheel.

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
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from glcl_core.data.volume import DataError

GENERATOR_VERSION = 1  # bump when the generator's output changes for the same parameters
TEMPLATE_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
LABEL_NAMES = {"0": "background", "1": "CSF (approximate)", "2": "grey matter", "3": "white matter"}
STALE_BUILD_SECONDS = 3600  # temporary build folders older than this are leftovers of interrupted builds
LICENCE = (
    "Derived from the MNI ICBM152 2009a nonlinear symmetric template (Fonov et al., NeuroImage 2011 and 2009), "
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, "
    "McGill University, as redistributed in the nilearn wheel. Use, copying and distribution are permitted provided "
    "this copyright notice appears in all copies."
)


@dataclass(frozen=True)
class GeneratorParams:
    """Ranges the pseudo-subjects are drawn from (uniform unless stated). Lengths in mm, angles in degrees."""

    inplane_spacing: tuple[float, float] = (1.8, 2.2)
    slice_thickness: tuple[float, float] = (2.0, 4.0)
    coverage: tuple[float, float] = (0.7, 1.0)  # fraction of the brain's S-I extent inside the field of view
    fov_xy: tuple[float, float] = (220.0, 256.0)  # in-plane field of view (R-L, A-P)
    rotation_deg: tuple[float, float, float] = (6.0, 6.0, 8.0)  # max |angle| about x, y, z
    scale: tuple[float, float] = (0.92, 1.08)  # per axis
    translation: tuple[float, float, float] = (6.0, 6.0, 4.0)  # max |shift| along x, y, z
    displacement_rms: float = 1.5  # smooth random displacement field, RMS per component
    displacement_wavelength: tuple[float, float] = (60.0, 160.0)
    gamma_log: float = 0.3  # gamma = exp(U(-g, g))
    bias_strength: float = 0.15  # std of the bias field's polynomial coefficients (log scale)
    noise: tuple[float, float] = (0.01, 0.04)  # Rician noise std relative to the template's maximum
    intensity_scale: float = 1000.0  # stored int16 = round(scale * intensity)
    # Off in the standard preset (identity), drawn from a separate random stream so turning them on leaves every
    # other draw of a subject unchanged.
    ventricle_expansion: tuple[float, float] = (0.0, 0.0)  # a: sample at p - a (p - c) g(p), g Gaussian about c
    ventricle_radius: float = 25.0  # mm, width of g
    ventricle_centre: tuple[float, float, float] = (0.0, -8.0, 14.0)  # MNI mm, between the lateral ventricles
    tissue_contrast: float = 0.0  # weight of the per-subject tissue-intensity image mixed into the T1
    csf_intensity: tuple[float, float] = (0.05, 0.35)  # relative to white matter
    gm_intensity: tuple[float, float] = (0.45, 0.8)  # relative to white matter
    texture: float = 0.0  # std of the log of a fine multiplicative texture
    texture_wavelength: float = 6.0  # mm, Gaussian smoothing sigma of the texture's white noise
    # Empty: CSF and GM levels from csf_intensity / gm_intensity (a T1-like ordering). Otherwise subject i gets
    # family i mod len (T1-, T2- or PD-like ordering, in turn, so the families stay balanced) of CONTRAST_FAMILIES
    # and draws its CSF, GM and WM levels from that family's ranges.
    contrast_families: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [f for f in self.contrast_families if f not in CONTRAST_FAMILIES]
        if unknown:
            raise ValueError(f"unknown contrast families {unknown}; choose from {', '.join(CONTRAST_FAMILIES)}")


# Tissue levels (fractions of the template's white-matter intensity) of each contrast family: ranges for CSF, GM and
# WM. Orderings as in T1-weighted (CSF < GM < WM), T2-weighted (WM < GM < CSF) and proton-density-weighted
# (WM < GM, CSF bright) brain MRI; the ranges are ours, wide on purpose (domain-randomised synthesis in the manner of
# SynthSeg, Billot et al. 2023, draws every tissue level independently).
CONTRAST_FAMILIES: dict[str, dict[str, tuple[float, float]]] = {
    "t1": {"csf": (0.05, 0.35), "gm": (0.45, 0.8), "wm": (1.0, 1.0)},
    "t2": {"csf": (0.85, 1.0), "gm": (0.5, 0.7), "wm": (0.25, 0.45)},
    "pd": {"csf": (0.7, 0.9), "gm": (0.8, 1.0), "wm": (0.55, 0.7)},
}


PRESETS: dict[str, GeneratorParams] = {
    "standard": GeneratorParams(),
    "varied": GeneratorParams(
        rotation_deg=(10.0, 10.0, 12.0), scale=(0.86, 1.14), displacement_rms=3.0,
        displacement_wavelength=(40.0, 120.0), gamma_log=0.4, bias_strength=0.25, noise=(0.01, 0.06),
        ventricle_expansion=(0.0, 0.45), tissue_contrast=0.7, texture=0.08,
    ),
    # The varied preset's shapes, with each subject's tissue contrast drawn from a T1-, T2- or PD-like family and
    # nothing of the template's own T1 contrast left (tissue_contrast 1): one labelled volume shows one contrast,
    # the unlabelled pool shows all three, as in multi-site, multi-sequence data.
    "multicontrast": GeneratorParams(
        rotation_deg=(10.0, 10.0, 12.0), scale=(0.86, 1.14), displacement_rms=3.0,
        displacement_wavelength=(40.0, 120.0), gamma_log=0.4, bias_strength=0.25, noise=(0.01, 0.06),
        ventricle_expansion=(0.0, 0.45), tissue_contrast=1.0, texture=0.08,
        contrast_families=("t1", "t2", "pd"),
    ),
}


def generator_params(preset: str | GeneratorParams | None) -> GeneratorParams:
    """The parameters of a preset name (``standard``, ``varied``, ``multicontrast``), or ``preset`` itself when it is parameters."""
    if preset is None:
        return PRESETS["standard"]
    if isinstance(preset, GeneratorParams):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown embedded data preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]


# ----------------------------------------------------------------------------------------------- template


@dataclass
class Template:
    """The ICBM152 maps on their 1 mm grid, as float32 in [0, 1]: ``t1``, ``gm``, ``wm``, ``mask`` ``(197, 233, 189)``.

    ``world_to_index``: 4x4 inverse affine. ``brain_points``: ``(N, 3)`` world mm of a subsample of brain voxels.
    """

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    mask: np.ndarray
    world_to_index: np.ndarray
    brain_points: np.ndarray

    @property
    def brain_centre(self) -> np.ndarray:
        return 0.5 * (self.brain_points.min(axis=0) + self.brain_points.max(axis=0))


def template_paths() -> dict[str, Path]:
    """Paths of the T1, GM and WM template files inside the installed nilearn package (not imported: slow)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("nilearn is not installed; the embedded data set reads its ICBM152 template files")
    data_dir = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    paths = {kind: data_dir / TEMPLATE_FILE.format(kind) for kind in ("t1", "gm", "wm")}
    for path in paths.values():
        if not path.is_file():
            raise DataError(f"{path}: ICBM152 template file missing from the nilearn installation")
    return paths


def load_template() -> Template:
    maps, affine = {}, None
    for kind, path in template_paths().items():
        image = nib.load(str(path))
        maps[kind] = np.asarray(image.dataobj, dtype=np.float32) / np.float32(255.0)
        affine = image.affine
    mask = (maps["t1"] > 0).astype(np.float32)  # the template is skull-stripped: non-zero T1 is brain
    index = np.argwhere(mask[::3, ::3, ::3] > 0) * 3
    points = nib.affines.apply_affine(affine, index)
    return Template(maps["t1"], maps["gm"], maps["wm"], mask, np.linalg.inv(affine), points)


# ----------------------------------------------------------------------------------------------- one subject


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """``(3, 3)`` rotation about x, then y, then z."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def smooth_field(rng: np.random.Generator, axes_mm: list[np.ndarray], rms: float,
                 wavelengths: tuple[float, float], n_waves: int = 4) -> np.ndarray:
    """``(3, X, Y, Z)`` float32 smooth random displacement (mm): a sum of random plane waves per component."""
    grids = np.meshgrid(*axes_mm, indexing="ij", sparse=True)
    field = np.zeros((3,) + tuple(len(a) for a in axes_mm), dtype=np.float32)
    for component in range(3):
        for _ in range(n_waves):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            k = 2 * np.pi / rng.uniform(*wavelengths)
            phase = rng.uniform(0, 2 * np.pi)
            field[component] += np.sin(k * sum(d * g for d, g in zip(direction, grids)) + phase).astype(np.float32)
    return field * np.float32(rms * np.sqrt(2.0 / n_waves))  # each sine has RMS 1/sqrt(2)


def bias_field(rng: np.random.Generator, axes_mm: list[np.ndarray], centre: np.ndarray, strength: float) -> np.ndarray:
    """``(X, Y, Z)`` float32 smooth multiplicative field: exp of a random quadratic polynomial, mean ~1."""
    u, v, w = [(a - c) / 100.0 for a, c in zip(axes_mm, centre)]
    u, v, w = u[:, None, None], v[None, :, None], w[None, None, :]
    terms = [u, v, w, u * u, v * v, w * w, u * v, v * w, u * w]
    coefficients = rng.normal(0.0, strength, size=len(terms))
    log_field = sum(c * t for c, t in zip(coefficients, terms))
    return np.exp(log_field - np.mean(log_field)).astype(np.float32)


def storage_layout(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Random axis order and flips for writing (real data come as RAS, LAS, LPS, slice-first ...)."""
    order = (0, 1, 2)
    roll = rng.uniform()
    if roll < 0.2:
        order = (1, 0, 2)  # in-plane axes swapped
    elif roll < 0.35:
        order = (2, 1, 0)  # slice axis stored first
    flips = tuple(bool(f) for f in rng.uniform(size=3) < (0.5, 0.5, 0.25))
    return order, flips


def stored_with_affine(array: np.ndarray, affine: np.ndarray, order: tuple[int, int, int],
                       flips: tuple[bool, bool, bool]) -> tuple[np.ndarray, np.ndarray]:
    """Flip then transpose ``array`` (RAS grid ``(X, Y, Z)``), updating the affine so world positions are kept."""
    affine = affine.copy()
    for axis, flip in enumerate(flips):
        if flip:
            array = np.flip(array, axis)
            affine[:3, 3] += affine[:3, axis] * (array.shape[axis] - 1)
            affine[:3, axis] = -affine[:3, axis]
    array = np.ascontiguousarray(np.transpose(array, order))
    affine[:3, :3] = affine[:3, list(order)]
    return array, affine


def make_subject(template: Template, index: int, seed: int, params: GeneratorParams) -> dict:
    """One pseudo-subject.

    Returns:
        dict with ``image`` int16 and ``label`` uint8 stored arrays (same shape), their 4x4 ``affine``, and the
        drawn ``params`` (spacing, thickness, coverage, ...).
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    p = params
    centre = template.brain_centre

    # Subject transform: scanner world p = M (q - c) + c + t for template world q.
    angles = rng.uniform(-1, 1, size=3) * np.asarray(p.rotation_deg)
    scales = rng.uniform(*p.scale, size=3)
    shift = rng.uniform(-1, 1, size=3) * np.asarray(p.translation)
    forward = rotation_matrix(angles) @ np.diag(scales)
    inverse = np.linalg.inv(forward)

    # Scanner grid: axial slices along world z, the field of view covering part of the brain's S-I extent.
    spacing = round(float(rng.uniform(*p.inplane_spacing)), 2)
    thickness = round(float(rng.uniform(*p.slice_thickness)), 1)
    coverage = float(rng.uniform(*p.coverage))
    brain_z = (template.brain_points - centre) @ forward[2] + centre[2] + shift[2]
    extent = float(brain_z.max() - brain_z.min())
    n_slices = max(8, int(round(coverage * extent / thickness)))
    z_start = float(brain_z.min()) + float(rng.uniform()) * max(0.0, extent - n_slices * thickness)
    n_xy = [int(round(f / spacing)) for f in p.fov_xy]
    grid_centre = centre[:2] + shift[:2] + rng.uniform(-4, 4, size=2)
    axes_mm = [
        grid_centre[0] + (np.arange(n_xy[0]) - (n_xy[0] - 1) / 2) * spacing,
        grid_centre[1] + (np.arange(n_xy[1]) - (n_xy[1] - 1) / 2) * spacing,
        z_start + (np.arange(n_slices) + 0.5) * thickness,
    ]
    displacement = smooth_field(rng, axes_mm, p.displacement_rms, p.displacement_wavelength)
    extra_rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 1]))  # the varied preset's draws
    expansion = float(extra_rng.uniform(*p.ventricle_expansion))
    if expansion > 0:
        displacement += ventricle_displacement(axes_mm, expansion, p, inverse, centre, shift)

    # Thick slices: average the maps over sub-positions across each slab.
    n_sub = max(2, int(round(thickness / 1.25)))
    sums = {k: np.zeros(displacement.shape[1:], dtype=np.float32) for k in ("t1", "gm", "wm", "mask")}
    for j in range(n_sub):
        offset = ((j + 0.5) / n_sub - 0.5) * thickness
        coords = template_coordinates(template, axes_mm, offset, inverse, centre, shift, displacement)
        for kind in sums:
            sums[kind] += map_coordinates(getattr(template, kind), coords, order=1, mode="constant", cval=0.0,
                                          output=np.float32)
    maps = {k: v / np.float32(n_sub) for k, v in sums.items()}

    label = tissue_labels(maps)
    t1, tissue_drawn = tissue_contrast(extra_rng, maps, axes_mm, p, index)
    image = mr_contrast(rng, t1, axes_mm, centre, p)

    affine = np.diag([spacing, spacing, thickness, 1.0])
    affine[:3, 3] = [axes_mm[0][0], axes_mm[1][0], axes_mm[2][0]]
    order, flips = storage_layout(rng)
    image_stored, affine_stored = stored_with_affine(image, affine, order, flips)
    label_stored, _ = stored_with_affine(label, affine, order, flips)
    drawn = {"spacing": spacing, "thickness": thickness, "coverage": round(coverage, 3), "n_slices": n_slices,
             "rotation_deg": np.round(angles, 2).tolist(), "scale": np.round(scales, 3).tolist(),
             "axcodes": "".join(nib.aff2axcodes(affine_stored))}
    if expansion > 0:
        drawn["ventricle_expansion"] = round(expansion, 3)
    drawn.update(tissue_drawn)
    return {"image": image_stored, "label": label_stored, "affine": affine_stored, "params": drawn}


def ventricle_displacement(axes_mm: list[np.ndarray], expansion: float, p: GeneratorParams, inverse: np.ndarray,
                           centre: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``(3, X, Y, Z)`` template-space displacement (mm) that enlarges the ventricles and deep structures.

    Each scanner point samples the template nearer to the ventricles' centre ``c_v``, by ``expansion`` times its
    offset from ``c_v`` weighted by a Gaussian of width ``ventricle_radius``: the middle grows by up to
    ``1 / (1 - expansion)`` while the cortex, far away, stays put.
    """
    x, y, z = np.meshgrid(*axes_mm, indexing="ij", sparse=True)
    scanner = [x, y, z]
    c_v = np.asarray(p.ventricle_centre, dtype=np.float64)
    # template-world position of each scanner point (before the smooth field): q = M^-1 (p - c - t) + c
    offset = [sum(inverse[i, j] * (scanner[j] - centre[j] - shift[j]) for j in range(3)) + centre[i] - c_v[i]
              for i in range(3)]
    weight = np.exp(-(offset[0] ** 2 + offset[1] ** 2 + offset[2] ** 2) / (2.0 * p.ventricle_radius ** 2))
    return np.stack([(-expansion * o * weight).astype(np.float32) for o in offset])


def tissue_contrast(rng: np.random.Generator, maps: dict[str, np.ndarray], axes_mm: list[np.ndarray],
                    p: GeneratorParams, index: int = 0) -> tuple[np.ndarray, dict]:
    """``(X, Y, Z)`` T1 in [0, 1] with this subject's tissue contrast and texture mixed in, and what was drawn.

    The template's T1 is blended with a piecewise-constant tissue image (CSF, GM and WM intensities drawn per
    subject, WM at the template's white-matter level), then multiplied by a fine random texture.
    """
    t1 = maps["t1"]
    drawn: dict = {}
    if p.tissue_contrast > 0:
        wm_level = float(np.median(t1[maps["wm"] > 0.9])) if np.any(maps["wm"] > 0.9) else float(t1.max())
        if p.contrast_families:
            family = str(p.contrast_families[index % len(p.contrast_families)])  # balanced: in turn
            ranges = CONTRAST_FAMILIES[family]
            csf_level, gm_level, wm_tissue = (rng.uniform(*ranges[k]) for k in ("csf", "gm", "wm"))
            drawn.update(contrast_family=family, wm_intensity=round(float(wm_tissue), 3))
        else:
            csf_level, gm_level, wm_tissue = rng.uniform(*p.csf_intensity), rng.uniform(*p.gm_intensity), 1.0
        tissue = wm_level * (csf_level * csf_probability(maps) + gm_level * maps["gm"] + wm_tissue * maps["wm"])
        t1 = (1.0 - p.tissue_contrast) * t1 + np.float32(p.tissue_contrast) * tissue.astype(np.float32)
        drawn.update(csf_intensity=round(float(csf_level), 3), gm_intensity=round(float(gm_level), 3))
    if p.texture > 0:
        spacing = [float(a[1] - a[0]) if len(a) > 1 else 1.0 for a in axes_mm]
        noise = gaussian_filter(rng.standard_normal(t1.shape).astype(np.float32),
                                sigma=[p.texture_wavelength / s for s in spacing])
        noise /= max(float(noise.std()), 1e-6)
        t1 = t1 * np.exp(np.float32(p.texture) * noise)
    return np.clip(t1, 0.0, 1.0).astype(np.float32), drawn


def template_coordinates(template: Template, axes_mm: list[np.ndarray], z_offset: float, inverse: np.ndarray,
                         centre: np.ndarray, shift: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """``(3, X, Y, Z)`` template voxel coordinates of the scanner grid points shifted by ``z_offset`` along z."""
    to_index = template.world_to_index[:3, :3] @ inverse  # scanner mm -> template index (linear part)
    origin = template.world_to_index[:3, :3] @ (centre - inverse @ (centre + shift)) + template.world_to_index[:3, 3]
    x, y, z = axes_mm[0][:, None, None], axes_mm[1][None, :, None], (axes_mm[2] + z_offset)[None, None, :]
    warp = np.einsum("ij,j...->i...", template.world_to_index[:3, :3], displacement)
    coords = np.empty(displacement.shape, dtype=np.float64)
    for c in range(3):
        coords[c] = to_index[c, 0] * x + to_index[c, 1] * y + to_index[c, 2] * z + origin[c] + warp[c]
    return coords


def csf_probability(maps: dict[str, np.ndarray]) -> np.ndarray:
    """``(X, Y, Z)`` approximate CSF probability: brain mask minus grey and white matter."""
    return np.clip(maps["mask"] - maps["gm"] - maps["wm"], 0.0, None)


def tissue_labels(maps: dict[str, np.ndarray]) -> np.ndarray:
    """``(X, Y, Z)`` uint8 argmax of background / CSF / GM / WM probabilities."""
    probabilities = np.stack([1.0 - maps["mask"], csf_probability(maps), maps["gm"], maps["wm"]])
    return np.argmax(probabilities, axis=0).astype(np.uint8)


def mr_contrast(rng: np.random.Generator, t1: np.ndarray, axes_mm: list[np.ndarray], centre: np.ndarray,
                p: GeneratorParams) -> np.ndarray:
    """``(X, Y, Z)`` int16 image: gamma, bias field and Rician noise applied to the warped T1 in [0, 1]."""
    gamma = float(np.exp(rng.uniform(-p.gamma_log, p.gamma_log)))
    image = np.power(np.clip(t1, 0.0, 1.0), np.float32(gamma)) * bias_field(rng, axes_mm, centre, p.bias_strength)
    sigma = np.float32(rng.uniform(*p.noise))
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imaginary * imaginary)
    return np.clip(np.rint(magnitude * p.intensity_scale), 0, np.iinfo(np.int16).max).astype(np.int16)


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
