"""Augmentation parameters: the frozen dataclasses of intensity and spatial transforms, their presets per stage
(global, local, fine-tuning) and the named global-stage views (:data:`GLOBAL_AUGMENTATIONS`).

Global-stage views (:data:`GLOBAL_AUGMENTATIONS`, chosen by ``GlobalConfig.augmentation``):

* ``"glcl"`` (default, GLCL's global stage): a crop of 100/192 of the side whose top-left corner lies in
  [10/192, 70/192) of the side on each axis (so both views keep the centre of the field of view), resized back to
  full size; then brightness +-0.3 and contrast 0.7-1.3, each drawn once per view batch, clipped to [0, 1.5].
  The corner is drawn from a continuous range where the GLCL code draws whole pixels.
* ``"glcl-per-image"``: GLCL's transforms with brightness and contrast drawn per image rather than once per view
  batch. With one draw per view batch every image of view 1 shares an intensity shift that view 2 does not, so a
  network can tell the two view batches apart from their global intensity alone; that shortcut makes the other view
  look *less* similar than the negatives of the same view batch early in training.
* ``"glcl+geometric"``: the same as ``"glcl"`` plus rotation +-15 deg, scaling 0.95-1.05 and left-right flips (each with
  probability 0.5). GLCL's global stage does not use these; they are an option here.
* ``"pcl"``: PCL's own pre-training augmentation: flips, and with probability 0.67 elastic deformation, rotation
  and scaling 0.7-1.3; no intensity change (see :data:`PCL_AUG`).

Fine-tuning (:class:`SegAug`): rotation +-15 deg, scale 0.95-1.05, flips, elastic, brightness +-0.1, contrast
0.8-1.2. Gamma and noise are available but off by default (``p_gamma = p_noise = 0``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace


# ------------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class IntensityAug:
    """Per-image intensity maps, each applied with its probability ``p_*``.

    Order: gamma (on the image's min-max range), brightness (add ``U(-brightness, brightness)``), contrast
    (``(x - mean) * c + mean``, ``c ~ U(contrast)``), Gaussian noise (std ``~ U(0, noise_std)``), clip.
    """

    brightness: float = 0.0
    p_brightness: float = 0.0
    contrast: tuple[float, float] = (1.0, 1.0)
    p_contrast: float = 0.0
    gamma: tuple[float, float] = (0.7, 1.5)
    p_gamma: float = 0.0
    noise_std: float = 0.03
    p_noise: float = 0.0
    clip: tuple[float, float] | None = None
    per_batch: bool = False  # True: one brightness/contrast/gamma/noise draw shared by every image of the call


@dataclass(frozen=True)
class SpatialAug:
    """Per-image spatial transforms, each applied with its probability ``p_*``.

    ``crop_side``: range of the crop side as a fraction of the image side, resized back to full size. ``crop_origin``:
    range of the crop's top-left corner as a fraction of the image side, drawn per axis (``None``: anywhere the crop
    fits inside the image). ``rotation_deg``: rotation drawn from ``U(-r, r)``. ``scale``: zoom factor range (> 1
    zooms in). ``elastic_sigma``: std in pixels of the displacement vectors on an ``elastic_grid`` x ``elastic_grid``
    control grid, upsampled bicubically to a smooth field. ``padding_mode`` of ``grid_sample`` for samples outside the
    image (``zeros`` maps labels there to background 0).
    """

    crop_side: tuple[float, float] = (1.0, 1.0)
    crop_origin: tuple[float, float] | None = None
    p_crop: float = 0.0
    rotation_deg: float = 0.0
    p_rotation: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    p_scale: float = 0.0
    p_hflip: float = 0.0
    p_vflip: float = 0.0
    elastic_sigma: float = 0.0
    elastic_grid: int = 3
    p_elastic: float = 0.0
    padding_mode: str = "zeros"


@dataclass(frozen=True)
class LocalAug(IntensityAug):
    """Local (decoder) stage: intensity only, so the two views correspond pixel to pixel (GLCL)."""

    brightness: float = 0.3
    p_brightness: float = 1.0
    contrast: tuple[float, float] = (0.7, 1.3)
    p_contrast: float = 1.0


@dataclass(frozen=True)
class GlobalAug(SpatialAug, IntensityAug):
    """Global (encoder) stage of GLCL: a 100x100-of-192 crop with its top-left corner in [10, 70) of 192 on each
    axis, resized back; brightness +-0.3 and contrast 0.7-1.3 drawn once per view batch; clipped to [0, 1.5].
    No rotation, scaling or flips (see ``"glcl+geometric"`` in :data:`GLOBAL_AUGMENTATIONS`)."""

    crop_side: tuple[float, float] = (100 / 192, 100 / 192)
    crop_origin: tuple[float, float] | None = (10 / 192, 70 / 192)
    p_crop: float = 1.0
    brightness: float = 0.3
    p_brightness: float = 1.0
    contrast: tuple[float, float] = (0.7, 1.3)
    p_contrast: float = 1.0
    clip: tuple[float, float] | None = (0.0, 1.5)
    per_batch: bool = True


@dataclass(frozen=True)
class SegAug(SpatialAug, IntensityAug):
    """Fine-tuning: rotation +-15 deg, scale 0.95-1.05, left-right flip, elastic, mild brightness/contrast."""

    rotation_deg: float = 15.0
    p_rotation: float = 0.5
    scale: tuple[float, float] = (0.95, 1.05)
    p_scale: float = 0.5
    p_hflip: float = 0.5
    elastic_sigma: float = 3.0
    p_elastic: float = 0.5
    brightness: float = 0.1
    p_brightness: float = 0.5
    contrast: tuple[float, float] = (0.8, 1.2)
    p_contrast: float = 0.5


GLCL_GEOMETRIC_AUG = replace(
    GlobalAug(), rotation_deg=15.0, p_rotation=0.5, scale=(0.95, 1.05), p_scale=0.5, p_hflip=0.5
)

# PCL's own pre-training views (its ACDC/CHD data loaders, batchgenerators transforms), per view: flips of either
# axis (p = 0.5 each); with p = 0.67 an elastic deformation, a rotation by U(0, 360) deg and an isotropic scaling in
# 0.7-1.3, all three together; no intensity change and no crop (its crop to the patch size is a no-op on slices
# already at that size). Differences here: the three spatial transforms are drawn independently, each with
# p = 0.67, and the elastic field is a smooth field of about 1 px RMS at our 96-px scale (PCL: alpha 100-350,
# sigma 14-17 px on 352-px patches, about 2-3 px RMS).
PCL_AUG = GlobalAug(
    crop_side=(1.0, 1.0), crop_origin=None, p_crop=0.0,
    rotation_deg=180.0, p_rotation=0.67, scale=(0.7, 1.3), p_scale=0.67, p_hflip=0.5, p_vflip=0.5,
    elastic_sigma=1.0, elastic_grid=7, p_elastic=0.67,
    brightness=0.0, p_brightness=0.0, contrast=(1.0, 1.0), p_contrast=0.0, clip=None, per_batch=False,
)

GLOBAL_AUGMENTATIONS: dict[str, GlobalAug] = {
    "glcl": GlobalAug(),
    "glcl-per-image": replace(GlobalAug(), per_batch=False),
    "glcl+geometric": GLCL_GEOMETRIC_AUG,
    "pcl": PCL_AUG,
}


def global_augmentation(name: str) -> GlobalAug:
    """The global-stage view parameters called ``name`` (a key of :data:`GLOBAL_AUGMENTATIONS`)."""
    if name not in GLOBAL_AUGMENTATIONS:
        raise ValueError(f"unknown global augmentation {name!r}; choose one of {', '.join(GLOBAL_AUGMENTATIONS)}")
    return GLOBAL_AUGMENTATIONS[name]
