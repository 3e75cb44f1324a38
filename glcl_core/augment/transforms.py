"""The batched, seeded transforms behind every view: per-image random draws, the spatial sampling grid and warp,
and the per-image intensity maps.

Every random number comes from the caller's ``torch.Generator``. The per-image parameters (a few numbers per
image) are drawn on the generator's device, usually the CPU, and then moved to ``images.device``, so a CPU
generator drives augmentation on CUDA/MPS tensors too. Per-pixel Gaussian noise is drawn on ``images.device``
from a generator seeded by a number drawn from the caller's generator (no large host-to-device copies), so
results are deterministic for a fixed seed on a given device.

Spatial transforms are one batched ``affine_grid`` + ``grid_sample``: per image a 2x3 matrix composes crop,
rotation, scale and flips, and an optional smooth elastic displacement (random vectors on a coarse grid,
upsampled bicubically) is added to the sampling grid. Intensity transforms are per-image elementwise maps.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from glcl_core.augment.params import IntensityAug, SpatialAug


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
