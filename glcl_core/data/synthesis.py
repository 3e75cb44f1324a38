"""The embedded data set's generator: one pseudo-subject warped from the ICBM152 template, with its contrast.

Reads the template from the installed nilearn package (:func:`load_template`); :func:`make_subject` draws one
subject from a seed and a subject index: affine and smooth non-linear warp, field of view, slice thickness and
spacing, tissue contrast and texture, gamma, bias field, Rician noise and storage orientation (what each preset
draws: :mod:`glcl_core.data.embedded`).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from glcl_core.data.presets import CONTRAST_FAMILIES, GeneratorParams
from glcl_core.data.volume import DataError

TEMPLATE_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


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

