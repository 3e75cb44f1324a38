"""The embedded data set's generator parameters: the ranges pseudo-subjects are drawn from, and the named presets.

:class:`GeneratorParams` holds the ranges; :data:`PRESETS` names three of them (``standard``, ``varied``,
``multicontrast``) and :data:`CONTRAST_FAMILIES` the T1-, T2- and PD-like tissue levels the ``multicontrast``
preset draws from. What the presets change is described in :mod:`glcl_core.data.embedded`.
"""
from __future__ import annotations

from dataclasses import dataclass


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
    """The parameters of a preset name (``standard``, ``varied``, ``multicontrast``), or ``preset`` itself when it is
    parameters."""
    if preset is None:
        return PRESETS["standard"]
    if isinstance(preset, GeneratorParams):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown embedded data preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]
