"""Batched, on-device, seeded augmentation: paired views for contrastive pre-training, warped pairs for
fine-tuning.

Every random number comes from the caller's ``torch.Generator``. The per-image parameters (a few numbers per
image) are drawn on the generator's device, usually the CPU, and then moved to ``images.device``, so a CPU
generator drives augmentation on CUDA/MPS tensors too. Per-pixel Gaussian noise is drawn on ``images.device``
from a generator seeded by a number drawn from the caller's generator (no large host-to-device copies), so
results are deterministic for a fixed seed on a given device.

Spatial transforms are one batched ``affine_grid`` + ``grid_sample``: per image a 2x3 matrix composes crop,
rotation, scale and flips, and an optional smooth elastic displacement (random vectors on a coarse grid,
upsampled bicubically) is added to the sampling grid. Intensity transforms are per-image elementwise maps.

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

import math
from dataclasses import dataclass, replace

import torch
from torch.nn import functional as F

from .batch import Batch


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

    ``crop_side``: range of the crop side as a fraction of the image side, resized back to full size.
    ``crop_origin``: range of the crop's top-left corner as a fraction of the image side, drawn per axis (``None``:
    anywhere the crop fits inside the image). ``rotation_deg``: rotation drawn from ``U(-r, r)``. ``scale``: zoom factor range
    (> 1 zooms in). ``elastic_sigma``: std in pixels of the displacement vectors on an ``elastic_grid`` x
    ``elastic_grid`` control grid, upsampled bicubically to a smooth field. ``padding_mode`` of ``grid_sample``
    for samples outside the image (``zeros`` maps labels there to background 0).
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


# ------------------------------------------------------------------------------ random draws
# Per-image parameters are drawn and combined on the generator's device (usually the CPU: a few numbers per
# image) and moved to the images' device once, so no decision needs a device-to-host sync.
def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(shape: tuple[int, ...], generator, low, high) -> torch.Tensor:
    """``U(low, high)`` of ``shape`` (float32) on the generator's device."""
    return low + (high - low) * torch.rand(shape, generator=generator, device=_gen_device(generator))


def _coin(n: int, p: float, generator) -> torch.Tensor:
    """``(n,)`` bool, True with probability ``p``. Always consumes ``n`` draws, so the stream layout is fixed."""
    return torch.rand((n,), generator=generator, device=_gen_device(generator)) < p


def _device_generator(seed: int, device: torch.device) -> torch.Generator | None:
    """A generator on ``device`` seeded with ``seed`` (None if this backend has none: draw on CPU then)."""
    try:
        return torch.Generator(device=device).manual_seed(seed)
    except (RuntimeError, TypeError):
        return None


def _noise_field(shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    gen = _device_generator(seed, device)
    if gen is None:
        cpu = torch.Generator().manual_seed(seed)
        return torch.randn(shape, generator=cpu).to(device)
    return torch.randn(shape, generator=gen, device=device)


def _check_images(images: torch.Tensor) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point, got {images.dtype}")


# ------------------------------------------------------------------------------ spatial
def _sampling_grid(
    batch: int, height: int, width: int, params: SpatialAug, generator, device, dtype
) -> torch.Tensor | None:
    """``(B, H, W, 2)`` normalised sampling grid (output pixel -> input location), or None for the identity."""
    # All per-image numbers in one fixed order so the stream layout does not depend on the values.
    apply = {name: _coin(batch, getattr(params, "p_" + name), generator)
             for name in ("crop", "rotation", "scale", "hflip", "vflip", "elastic")}
    side = _uniform((batch,), generator, params.crop_side[0], params.crop_side[1])
    centre = _uniform((batch, 2), generator, -1.0, 1.0)  # or the corner's place in its range (crop_origin)
    angle = _uniform((batch,), generator, -params.rotation_deg, params.rotation_deg) * (math.pi / 180)
    zoom = _uniform((batch,), generator, params.scale[0], params.scale[1])
    use_elastic = params.elastic_sigma > 0 and params.p_elastic > 0
    if use_elastic:
        g = int(params.elastic_grid)
        control = torch.randn((batch, 2, g, g), generator=generator, device=_gen_device(generator))

    if not any(bool(a.any()) for a in apply.values()):
        return None

    one = torch.ones_like(side)
    side = torch.where(apply["crop"], side, one)
    if params.crop_origin is None:
        centre = centre * (1 - side)[:, None]  # anywhere the crop stays inside the image
    else:  # top-left corner t in [lo, hi) of the side: centre t + side / 2, in [-1, 1] units
        lo, hi = params.crop_origin
        corner = lo + (hi - lo) * (centre + 1) / 2
        centre = (2 * (corner + side[:, None] / 2) - 1).clamp(-1.0, 1.0)
    centre = centre * apply["crop"][:, None]
    angle = torch.where(apply["rotation"], angle, torch.zeros_like(angle))
    zoom = torch.where(apply["scale"], zoom, one)
    flip_x = torch.where(apply["hflip"], -one, one)
    flip_y = torch.where(apply["vflip"], -one, one)

    # Rotation in pixel units expressed in normalised coordinates (x spans W, y spans H): D^-1 R D.
    cos, sin = torch.cos(angle), torch.sin(angle)
    aspect = width / height
    # A = side/zoom * (D^-1 R D) @ diag(flip_x, flip_y); input = A @ output + centre.
    k = side / zoom
    theta = torch.stack(
        [
            torch.stack([k * cos * flip_x, -k * sin / aspect * flip_y, centre[:, 0]], dim=1),
            torch.stack([k * sin * aspect * flip_x, k * cos * flip_y, centre[:, 1]], dim=1),
        ],
        dim=1,
    ).to(device=device, dtype=dtype)
    grid = F.affine_grid(theta, [batch, 1, height, width], align_corners=False)

    if use_elastic and bool(apply["elastic"].any()):
        # pixels -> normalised units (x: 2/W, y: 2/H); images without elastic get no displacement.
        to_norm = torch.tensor([2.0 / width, 2.0 / height]).view(1, 2, 1, 1)
        amplitude = (params.elastic_sigma * apply["elastic"].float()).view(batch, 1, 1, 1)
        control = (control * to_norm.to(control.device) * amplitude).to(device=device, dtype=dtype)
        field = F.interpolate(control, size=(height, width), mode="bicubic", align_corners=True)
        grid = grid + field.permute(0, 2, 3, 1)
    return grid


def _warp(x: torch.Tensor, grid: torch.Tensor | None, mode: str, padding_mode: str) -> torch.Tensor:
    if grid is None:
        return x
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


# ------------------------------------------------------------------------------ intensity
def _intensity(images: torch.Tensor, params: IntensityAug, generator) -> torch.Tensor:
    """``images: (B, C, H, W)`` -> same shape, per-image intensity maps."""
    b = images.shape[0]
    device, dtype = images.device, images.dtype
    n = 1 if params.per_batch else b  # per_batch: one draw, shared by every image of this call
    apply = {name: _coin(n, getattr(params, "p_" + name), generator)
             for name in ("gamma", "brightness", "contrast", "noise")}
    gamma = _uniform((n,), generator, params.gamma[0], params.gamma[1])
    shift = _uniform((n,), generator, -params.brightness, params.brightness) * apply["brightness"]
    factor = _uniform((n,), generator, params.contrast[0], params.contrast[1])
    factor = torch.where(apply["contrast"], factor, torch.ones_like(factor))
    noise_std = _uniform((n,), generator, 0.0, params.noise_std) * apply["noise"]
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=_gen_device(generator)))
    if n != b:
        apply = {k: v.expand(b) for k, v in apply.items()}
        gamma, shift, factor, noise_std = (t.expand(b) for t in (gamma, shift, factor, noise_std))

    def per_image(values: torch.Tensor) -> torch.Tensor:
        return values.to(device=device, dtype=dtype).view(b, 1, 1, 1)

    x = images
    if bool(apply["gamma"].any()):
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        span = (hi - lo).clamp_min(1e-6)
        curved = lo + span * ((x - lo) / span).clamp(0, 1).pow(per_image(gamma))
        x = torch.where(apply["gamma"].to(device).view(b, 1, 1, 1), curved, x)
    if bool(apply["brightness"].any()):
        x = x + per_image(shift)
    if bool(apply["contrast"].any()):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * per_image(factor) + mean
    if params.noise_std > 0 and bool(apply["noise"].any()):
        x = x + per_image(noise_std) * _noise_field(tuple(x.shape), noise_seed, device).to(dtype)
    if params.clip is not None:
        x = x.clamp(params.clip[0], params.clip[1])
    return x


# ------------------------------------------------------------------------------ public API
def spatial_intensity(images: torch.Tensor, generator: torch.Generator | None, params: GlobalAug) -> torch.Tensor:
    """One augmented view. ``images: (B, C, H, W)`` float -> ``(B, C, H, W)``."""
    _check_images(images)
    b, _, h, w = images.shape
    grid = _sampling_grid(b, h, w, params, generator, images.device, images.dtype)
    return _intensity(_warp(images, grid, "bilinear", params.padding_mode), params, generator)


def global_views(
    images: torch.Tensor, generator: torch.Generator | None, params: GlobalAug = GlobalAug()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent spatial + intensity views. ``images: (B, 1, H, W)`` -> two ``(B, 1, H, W)``."""
    return spatial_intensity(images, generator, params), spatial_intensity(images, generator, params)


def local_views(
    images: torch.Tensor, generator: torch.Generator | None, params: LocalAug = LocalAug()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent intensity-only views (pixel-aligned). ``images: (B, 1, H, W)`` -> two ``(B, 1, H, W)``."""
    _check_images(images)
    return _intensity(images, params, generator), _intensity(images, params, generator)


def augment_pair(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    generator: torch.Generator | None,
    params: SegAug = SegAug(),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fine-tuning augmentation: one spatial warp for image and label, intensity on the image only.

    ``images: (B, 1, H, W)`` float, ``labels: (B, H, W)`` int64 (or None) -> same shapes and dtypes. Labels are
    resampled with nearest interpolation, so they keep valid class values (outside the image: 0).
    """
    _check_images(images)
    b, _, h, w = images.shape
    if labels is not None and tuple(labels.shape) != (b, h, w):
        raise ValueError(f"labels must be (B, H, W) = {(b, h, w)}, got {tuple(labels.shape)}")
    grid = _sampling_grid(b, h, w, params, generator, images.device, images.dtype)
    warped = _intensity(_warp(images, grid, "bilinear", params.padding_mode), params, generator)
    if labels is None:
        return warped, None
    # Nearest sampling of the float class map returns exact class values; zeros padding -> background.
    lab = _warp(labels[:, None].to(images.dtype), grid, "nearest", params.padding_mode)
    return warped, lab[:, 0].round().to(labels.dtype)


def augment_batch(batch: Batch, generator: torch.Generator | None, params: SegAug = SegAug()) -> Batch:
    """:func:`augment_pair` on a :class:`Batch` (metadata unchanged)."""
    images, labels = augment_pair(batch.images, batch.labels, generator, params)
    return replace(batch, images=images, labels=labels)


def make_views(
    batch: Batch,
    generator: torch.Generator | None,
    stage: str = "global",
    params: GlobalAug | LocalAug | None = None,
) -> Batch:
    """A batch of ``2B`` views: all first views, then all second views, metadata repeated.

    ``stage="global"``: :func:`global_views` (labels dropped: they no longer match the warped pixels).
    ``stage="local"``: :func:`local_views` (labels kept: the views are pixel-aligned).
    """
    if stage == "global":
        v1, v2 = global_views(batch.images, generator, params if params is not None else GlobalAug())
        first, second = replace(batch, images=v1, labels=None), replace(batch, images=v2, labels=None)
    elif stage == "local":
        v1, v2 = local_views(batch.images, generator, params if params is not None else LocalAug())
        first, second = batch.with_images(v1), batch.with_images(v2)
    else:
        raise ValueError(f"stage must be 'global' or 'local', got {stage!r}")
    return Batch.cat([first, second])
