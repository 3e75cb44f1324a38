"""Augmentation: determinism, geometry, pixel alignment, label warping."""
from __future__ import annotations

import pytest
import torch

from glcl_core.augment import (
    GlobalAug,
    LocalAug,
    SegAug,
    augment_batch,
    augment_pair,
    global_views,
    local_views,
    make_views,
)
from glcl_core.batch import Batch

NO_INTENSITY = dict(p_brightness=0.0, p_contrast=0.0, p_gamma=0.0, p_noise=0.0)
NO_SPATIAL = dict(p_crop=0.0, p_rotation=0.0, p_scale=0.0, p_hflip=0.0, p_vflip=0.0, p_elastic=0.0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_images(b: int = 6, h: int = 48, w: int = 48, seed: int = 0) -> torch.Tensor:
    """``(B, 1, H, W)`` in [0, 1]: smooth blobs, so interpolation is well behaved."""
    g = gen(seed)
    coarse = torch.rand(b, 1, 6, 6, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True).clamp(0, 1)


def square_labels(b: int = 4, size: int = 64) -> torch.Tensor:
    """``(B, H, W)`` int64: nested off-centre rectangles of classes 0..3 (large regions)."""
    lab = torch.zeros(b, size, size, dtype=torch.int64)
    for i in range(b):
        o = 2 * i
        lab[i, 8 + o : 56 - o, 10:50] = 1
        lab[i, 16 + o : 44, 18 + o : 40] = 2
        lab[i, 24:36 - o, 24:34] = 3
    return lab


def test_global_views_deterministic_per_seed_and_different_across_seeds():
    x = smooth_images()
    a1, a2 = global_views(x, gen(3))
    b1, b2 = global_views(x, gen(3))
    c1, _ = global_views(x, gen(4))
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.allclose(a1, c1, atol=1e-3)
    # The two views are drawn independently and both differ from the input.
    assert (a1 - a2).abs().mean() > 0.01
    assert (a1 - x).abs().mean() > 0.01
    assert a1.shape == x.shape and a1.dtype == torch.float32


def test_full_augmentation_is_deterministic_including_noise_and_elastic():
    x = smooth_images()
    params = GlobalAug(p_elastic=1.0, elastic_sigma=3.0, p_gamma=1.0, p_noise=1.0, p_vflip=0.5)
    a = global_views(x, gen(7), params)
    b = global_views(x, gen(7), params)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    c = global_views(x, gen(8), params)
    assert not torch.allclose(a[0], c[0], atol=1e-3)


def test_output_ranges_are_sane():
    x = smooth_images(b=16)
    for v in global_views(x, gen(0), GlobalAug(p_gamma=1.0, p_noise=1.0)):
        assert torch.isfinite(v).all()
        # brightness +-0.3 and contrast <= 1.3 around the mean keep [0, 1] inputs within [-1, 2]
        assert v.min() > -1.0 and v.max() < 2.0
    clipped, _ = global_views(x, gen(0), GlobalAug(clip=(0.0, 1.5)))
    assert clipped.min() >= 0.0 and clipped.max() <= 1.5


def test_crop_resize_zooms_in():
    # A horizontal ramp: after a crop of half the side resized back, it spans half the range.
    w = 64
    ramp = torch.linspace(0, 1, w).expand(3, 1, w, w).contiguous()
    params = GlobalAug(crop_side=(0.5, 0.5), **{**NO_SPATIAL, "p_crop": 1.0}, **NO_INTENSITY)
    view, _ = global_views(ramp, gen(0), params)
    span = view[..., -1] - view[..., 0]
    assert torch.allclose(span, torch.full_like(span, 0.5), atol=0.03)
    # Crops stay inside the image: no zero padding appears.
    assert view.min() >= 0.0 and (view[..., 0] >= 0.0).all()


def test_hflip_is_exact():
    x = smooth_images()
    params = GlobalAug(**{**NO_SPATIAL, "p_hflip": 1.0}, **NO_INTENSITY)
    view, _ = global_views(x, gen(0), params)
    assert torch.allclose(view, x.flip(-1), atol=1e-5)


def test_identity_when_everything_is_off():
    x = smooth_images()
    params = GlobalAug(**NO_SPATIAL, **NO_INTENSITY)
    v1, v2 = global_views(x, gen(0), params)
    assert torch.equal(v1, x) and torch.equal(v2, x)


def test_rotation_respects_aspect_ratio():
    # A centred disc on a non-square image is invariant under rotation only if rotation is done in pixel units.
    h, w = 40, 80
    yy, xx = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
    disc = ((yy**2 + xx**2) < 15**2).float().expand(4, 1, h, w).contiguous()
    params = GlobalAug(rotation_deg=60.0, **{**NO_SPATIAL, "p_rotation": 1.0}, **NO_INTENSITY)
    view, _ = global_views(disc, gen(1), params)
    assert (view - disc).abs().mean() < 0.02  # interpolation at the rim only (an ellipse gives ~0.09)
    # while a non-symmetric bar does change
    bar = torch.zeros(4, 1, h, w)
    bar[..., 18:22, 10:70] = 1.0
    view, _ = global_views(bar, gen(1), params)
    assert (view - bar).abs().mean() > 0.03


def test_elastic_grows_with_sigma_and_is_smooth():
    x = smooth_images()

    def change(sigma: float) -> float:
        params = GlobalAug(elastic_sigma=sigma, **{**NO_SPATIAL, "p_elastic": 1.0}, **NO_INTENSITY)
        view, _ = global_views(x, gen(0), params)
        return float((view - x).abs().mean())

    small, large = change(0.5), change(4.0)
    assert 1e-3 < small < large
    # A smooth field moves neighbouring pixels together: the warped image stays smooth.
    params = GlobalAug(elastic_sigma=4.0, **{**NO_SPATIAL, "p_elastic": 1.0}, **NO_INTENSITY)
    view, _ = global_views(x, gen(0), params)
    roughness = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean()  # noqa: E731
    assert roughness(view) < 1.5 * roughness(x)


def test_local_views_are_pixel_aligned():
    x = smooth_images(b=8)
    v1, v2 = local_views(x, gen(0))
    assert not torch.allclose(v1, v2, atol=1e-3)
    # Brightness + contrast are per-image affine maps: views are perfectly correlated with the input.
    for v in (v1, v2):
        flat_v, flat_x = v.flatten(1), x.flatten(1)
        vc = flat_v - flat_v.mean(1, keepdim=True)
        xc = flat_x - flat_x.mean(1, keepdim=True)
        corr = (vc * xc).sum(1) / (vc.norm(dim=1) * xc.norm(dim=1))
        assert (corr > 0.9999).all()
    # With gamma as well, the maps stay monotone: the brightest and darkest pixels do not move.
    v1, v2 = local_views(x, gen(0), LocalAug(p_gamma=1.0))
    for v in (v1, v2):
        assert torch.equal(v.flatten(1).argmax(1), x.flatten(1).argmax(1))
        assert torch.equal(v.flatten(1).argmin(1), x.flatten(1).argmin(1))


def test_local_views_with_noise_differ_but_stay_aligned():
    x = smooth_images(b=4)
    clean, _ = local_views(x, gen(0), LocalAug())
    noisy, _ = local_views(x, gen(0), LocalAug(p_noise=1.0, noise_std=0.05))
    assert not torch.equal(clean, noisy)
    assert (noisy - clean).abs().mean() < 0.05  # noise on top of the same intensity map


def test_augment_pair_labels_valid_and_consistent_with_image():
    labels = square_labels()
    images = labels.float()[:, None]
    params = SegAug(
        **NO_INTENSITY, p_rotation=1.0, p_scale=1.0, p_hflip=0.5, p_elastic=1.0, elastic_sigma=3.0
    )
    out_img, out_lab = augment_pair(images, labels, gen(5), params)
    assert out_lab.dtype == torch.int64 and out_lab.shape == labels.shape
    assert set(out_lab.unique().tolist()) <= {0, 1, 2, 3}
    assert not torch.equal(out_lab, labels)
    # The image equal to the label map was warped by the same field (bilinearly): they agree except at edges.
    agree = (out_img[:, 0].round().long() == out_lab).float().mean()
    assert agree > 0.97
    # ... which a differently drawn warp would not.
    _, other_lab = augment_pair(images, labels, gen(6), params)
    assert (out_img[:, 0].round().long() == other_lab).float().mean() < agree - 0.02
    # Every class survives the small warps.
    for i in range(len(labels)):
        assert set(out_lab[i].unique().tolist()) == {0, 1, 2, 3}


def test_augment_pair_deterministic_and_no_labels():
    x = smooth_images(b=4, h=64, w=64)
    labels = square_labels()
    a = augment_pair(x, labels, gen(2))
    b = augment_pair(x, labels, gen(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    img, lab = augment_pair(x, None, gen(2))
    assert lab is None and torch.equal(img, a[0])
    with pytest.raises(ValueError, match="labels must be"):
        augment_pair(x, labels[:, :32], gen(2))


def test_works_under_no_grad_and_keeps_dtype():
    x = smooth_images(b=2)
    with torch.no_grad():
        v1, v2 = global_views(x, gen(0), GlobalAug(p_elastic=1.0, elastic_sigma=2.0, p_noise=1.0))
    assert v1.dtype == torch.float32 and not v1.requires_grad
    x64 = x.double()
    v64, _ = global_views(x64, gen(0))
    assert v64.dtype == torch.float64
    with pytest.raises(ValueError, match="floating"):
        global_views((x * 10).long(), gen(0))
    with pytest.raises(ValueError, match="B, C, H, W"):
        global_views(x[0], gen(0))


def _batch(b: int = 4, labels: bool = True) -> Batch:
    lab = square_labels(b) if labels else None
    return Batch(
        images=smooth_images(b=b, h=64, w=64),
        labels=lab,
        image=torch.arange(b) + 10,
        volume=torch.arange(b) // 2,
        partition=torch.arange(b) % 2,
        position=torch.linspace(0.1, 1.0, b),
    )


def test_make_views_global_and_local():
    batch = _batch()
    out = make_views(batch, gen(0), stage="global")
    assert len(out) == 8 and out.images.shape == (8, 1, 64, 64)
    for name in ("image", "volume", "partition", "position"):
        meta = getattr(batch, name)
        assert torch.equal(getattr(out, name), torch.cat([meta, meta]))
    assert out.labels is None  # warped views no longer match the labels
    assert not torch.allclose(out.images[:4], out.images[4:], atol=1e-3)
    v1, v2 = global_views(batch.images, gen(0))
    assert torch.equal(out.images, torch.cat([v1, v2]))

    local = make_views(batch, gen(0), stage="local")
    assert torch.equal(local.labels, torch.cat([batch.labels, batch.labels]))
    with pytest.raises(ValueError, match="stage"):
        make_views(batch, gen(0), stage="dense")


def test_augment_batch_keeps_metadata():
    batch = _batch()
    out = augment_batch(batch, gen(1))
    assert torch.equal(out.image, batch.image) and out.labels.dtype == torch.int64
    assert out.images.shape == batch.images.shape


def test_cpu_generator_drives_device_tensors(accelerator):
    device = accelerator
    x = smooth_images()
    params = GlobalAug(p_elastic=1.0, elastic_sigma=2.0)  # no per-pixel noise: results comparable to CPU
    ref, _ = global_views(x, gen(0), params)
    out, _ = global_views(x.to(device), gen(0), params)
    assert out.device.type == device
    assert torch.allclose(out.cpu(), ref, atol=1e-4)
    noisy = local_views(x.to(device), gen(0), LocalAug(p_noise=1.0))
    again = local_views(x.to(device), gen(0), LocalAug(p_noise=1.0))
    assert torch.equal(noisy[0], again[0])
    img, lab = augment_pair(x.to(device)[:4, :, :, :], square_labels(4, 48).to(device), gen(0))
    assert lab.device.type == device and lab.dtype == torch.int64


def test_glcl_crop_corner_stays_in_its_range():
    # A ramp along x (columns) and one along y (rows): after a 100/192 crop with its top-left corner in
    # [10/192, 70/192) of the side, the first output pixel samples the corner, the crop spans 100/192.
    w = 192
    ramp_x = torch.linspace(0, 1, w).expand(64, 1, w, w).contiguous()
    params = GlobalAug(**{**NO_SPATIAL, "p_crop": 1.0}, **NO_INTENSITY)
    view, _ = global_views(ramp_x, gen(0), params)
    start = view[:, 0, w // 2, 0]
    span = view[:, 0, w // 2, -1] - start
    assert torch.allclose(span, torch.full_like(span, 100 / 192), atol=0.02)
    assert start.min() >= 10 / 192 - 0.01 and start.max() <= 70 / 192 + 0.01
    assert start.max() - start.min() > 0.2  # the corner does vary over its range
    ramp_y = ramp_x.transpose(-1, -2).contiguous()
    view_y, _ = global_views(ramp_y, gen(1), params)
    start_y = view_y[:, 0, 0, w // 2]
    assert start_y.min() >= 10 / 192 - 0.01 and start_y.max() <= 70 / 192 + 0.01
    # The old behaviour (corner anywhere the crop fits) is the crop_origin=None option and reaches the far edge.
    anywhere = GlobalAug(crop_origin=None, **{**NO_SPATIAL, "p_crop": 1.0}, **NO_INTENSITY)
    view_any, _ = global_views(ramp_x, gen(0), anywhere)
    assert view_any[:, 0, w // 2, 0].max() > 0.4


def test_glcl_intensity_is_one_draw_per_view_batch():
    # Brightness and contrast are drawn once per call (view batch): every image of a view gets the same shift.
    x = torch.full((8, 1, 16, 16), 0.5)
    params = GlobalAug(**NO_SPATIAL)
    v1, v2 = global_views(x, gen(0), params)
    for v in (v1, v2):
        assert torch.allclose(v, v[:1].expand_as(v))
    assert not torch.allclose(v1, v2)  # the two views have their own draws
    per_image = GlobalAug(per_batch=False, **NO_SPATIAL)
    u, _ = global_views(x, gen(0), per_image)
    assert u.flatten(1).mean(1).unique().numel() > 1
    assert v1.min() >= 0.0 and v1.max() <= 1.5  # GLCL clips to [0, 1.5]


def test_global_augmentation_names():
    from glcl_core.augment import GLOBAL_AUGMENTATIONS, global_augmentation

    glcl = global_augmentation("glcl")
    assert glcl.p_rotation == 0 and glcl.p_hflip == 0 and glcl.p_scale == 0  # no geometry in GLCL's global stage
    assert glcl.crop_origin == (10 / 192, 70 / 192) and glcl.per_batch and glcl.clip == (0.0, 1.5)
    geo = global_augmentation("glcl+geometric")
    assert geo.p_rotation > 0 and geo.p_hflip > 0 and geo.crop_side == glcl.crop_side
    assert set(GLOBAL_AUGMENTATIONS) >= {"glcl", "glcl+geometric", "pcl"}
    with pytest.raises(ValueError, match="unknown global augmentation"):
        global_augmentation("simclr")


def test_pcl_views_are_spatial_only():
    from glcl_core.augment import global_augmentation

    pcl = global_augmentation("pcl")
    assert pcl.p_brightness == 0 and pcl.p_contrast == 0 and pcl.p_crop == 0
    x = smooth_images(b=16)
    v1, v2 = global_views(x, gen(0), pcl)
    assert (v1 - x).abs().mean() > 0.01  # flips / rotations move pixels
    # no intensity map: every view's values stay inside the image's range (bilinear sampling, zeros outside)
    assert v1.min() >= 0.0 and v1.max() <= x.max() + 1e-5
