"""glcl_core.analysis.slices (cross-volume slice statistics) and the chapter-1 figures and widgets built on it."""
from __future__ import annotations

import numpy as np
import pytest

from glcl_core.analysis import slices
from glcl_core.data import Volume


def make_volume(name: str, n_slices: int, size: int = 8, pattern=None, affine=None) -> Volume:
    """Slice k filled by ``pattern(k, n_slices)`` (an (H, W) array), default: the constant position."""
    image = np.zeros((n_slices, size, size), dtype=np.float32)
    for k in range(n_slices):
        image[k] = pattern(k, n_slices) if pattern else (k + 1) / n_slices
    label = (image > 0.5).astype(np.int64)
    meta = {"canonical_affine": affine} if affine is not None else {}
    return Volume(name, image, label, (3.0, 2.0, 2.0), source=f"/data/{name}.nii.gz", meta=meta)


def partition_pattern(n_partitions: int, size: int = 8):
    """Slices of partition s show a bright square in a place of their own: equal within, different between."""
    def pattern(k, n_slices):
        s = k * n_partitions // n_slices
        image = np.zeros((size, size), dtype=np.float32)
        row, col = divmod(s, size // 2)
        image[2 * row:2 * row + 2, 2 * col:2 * col + 2] = 1.0
        return image
    return pattern


@pytest.mark.parametrize("n_slices,n", [(30, 12), (12, 12), (7, 12), (100, 5), (1, 3)])
def test_spread_indices_are_unique_in_range_and_spread(n_slices, n):
    idx = slices.spread_indices(n_slices, n)
    assert idx.dtype == np.int64 and len(idx) == min(n, n_slices)
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < n_slices
    if n_slices >= n:  # one index in each of n equal bins
        assert np.array_equal(idx * n // n_slices, np.arange(n))
    with pytest.raises(ValueError):
        slices.spread_indices(10, 0)


def test_sample_matches_volume_positions_and_partitions():
    volumes = [make_volume("a", 30), make_volume("b", 17), make_volume("c", 9)]
    sample = slices.sample_slices(volumes, per_volume=6)
    assert len(sample) == 18 and sample.images.shape == (18, 8, 8)
    assert sample.names == ["a", "b", "c"]
    for i, v in enumerate(volumes):
        rows = np.flatnonzero(sample.volume == i)
        k = sample.index[rows]
        np.testing.assert_allclose(sample.positions[rows], v.positions[k], rtol=1e-6)
        for s in (1, 2, 4, 8):
            assert np.array_equal(sample.partitions(s)[rows], v.partitions(s)[k])
        np.testing.assert_array_equal(sample.images[rows], v.image[k])
    with pytest.raises(ValueError, match="fewer than 10"):
        sample.partitions(10)


def test_sample_order_sorts_by_partition_then_position():
    sample = slices.sample_slices([make_volume("a", 30), make_volume("b", 17)], per_volume=8)
    order = sample.order(4)
    parts, pos = sample.partitions(4)[order], sample.positions[order]
    assert sorted(order.tolist()) == list(range(len(sample)))
    assert np.all(np.diff(parts) >= 0)
    for s in range(4):
        assert np.all(np.diff(pos[parts == s]) >= 0)


def test_different_in_plane_shapes_are_refused():
    with pytest.raises(ValueError, match="size="):
        slices.sample_slices([make_volume("a", 10, size=8), make_volume("b", 10, size=6)])


def test_partition_mean_slices_average_each_partition_of_each_volume():
    volumes = [make_volume("a", 12, pattern=lambda k, z: np.full((8, 8), k, np.float32)),
               make_volume("b", 9, pattern=lambda k, z: np.full((8, 8), 10 * k, np.float32))]
    means = slices.partition_mean_slices(volumes, 3)
    assert means.shape == (2, 3, 8, 8) and means.dtype == np.float32
    np.testing.assert_allclose(means[0, :, 0, 0], [1.5, 5.5, 9.5])  # slices 0-3, 4-7, 8-11
    np.testing.assert_allclose(means[1, :, 0, 0], [10.0, 40.0, 70.0])  # slices 0-2, 3-5, 6-8


def test_correlation_is_pearson_and_ignores_brightness_and_contrast():
    rng = np.random.default_rng(0)
    a = rng.random((6, 6))
    images = np.stack([a, 2 * a + 0.3, 1 - a, np.zeros((6, 6)), rng.random((6, 6))])
    sim = slices.slice_similarity(images, "correlation")
    assert sim.shape == (5, 5) and np.allclose(sim, sim.T)
    assert np.allclose(np.diag(sim), 1.0)
    assert sim[0, 1] == pytest.approx(1.0) and sim[0, 2] == pytest.approx(-1.0)
    assert sim[3, 0] == 0.0 and sim[3, 4] == 0.0  # blank slice: no variance, no correlation
    assert sim[0, 4] == pytest.approx(np.corrcoef(a.ravel(), images[4].ravel())[0, 1])


def test_global_ssim_is_one_for_identical_and_penalises_contrast():
    rng = np.random.default_rng(1)
    a = rng.random((8, 8)) * 0.5
    images = np.stack([a, a, 2 * a, 1 - a])
    ssim = slices.slice_similarity(images, "ssim")
    corr = slices.slice_similarity(images, "correlation")
    assert ssim[0, 1] == pytest.approx(1.0)
    assert corr[0, 2] == pytest.approx(1.0) and ssim[0, 2] < 0.95  # same structure, other contrast
    assert ssim[0, 3] < 0
    assert np.allclose(ssim, ssim.T)
    with pytest.raises(ValueError, match="kind"):
        slices.slice_similarity(images, "cosine")


def test_downsample_takes_block_means():
    images = np.arange(2 * 4 * 6, dtype=np.float64).reshape(2, 4, 6)
    small = slices.block_downsample(images, 2)
    assert small.shape == (2, 2, 3)
    assert small[0, 0, 0] == pytest.approx(np.mean([0, 1, 6, 7]))
    assert slices.slice_similarity(images, downsample=2).shape == (2, 2)


def test_partition_contrast_on_perfectly_partitioned_volumes():
    volumes = [make_volume(f"v{i}", z, pattern=partition_pattern(4)) for i, z in enumerate([16, 20, 13])]
    sample = slices.sample_slices(volumes, per_volume=8)
    sim = slices.slice_similarity(sample.images)
    result = slices.partition_contrast(sim, sample, 4)
    assert result.same == pytest.approx(1.0)
    assert result.other < 0 and result.gap > 1.0
    assert result.top1 == 1.0
    parts = sample.partitions(4)
    other = sample.volume[:, None] != sample.volume[None, :]
    expected_chance = np.mean(((parts[:, None] == parts[None, :]) & other).sum(1) / other.sum(1))
    assert result.chance == pytest.approx(expected_chance)
    assert 0.2 < result.chance < 0.3
    assert "S=4" in str(result) and "gap" in str(result)


def test_partition_contrast_ignores_pairs_inside_one_volume():
    volumes = [make_volume(f"v{i}", 12 + i, pattern=partition_pattern(2)) for i in range(3)]
    sample = slices.sample_slices(volumes, per_volume=6)
    sim = slices.slice_similarity(sample.images)
    tampered = sim.copy()
    tampered[sample.volume[:, None] == sample.volume[None, :]] = 5.0
    a, b = slices.partition_contrast(sim, sample, 2), slices.partition_contrast(tampered, sample, 2)
    assert (a.same, a.other, a.top1) == (b.same, b.other, b.top1)
    with pytest.raises(ValueError, match="similarity"):
        slices.partition_contrast(sim[:-1, :-1], sample, 2)


def test_similarity_by_distance_bins_all_cross_volume_pairs():
    volumes = [make_volume(f"v{i}", z) for i, z in enumerate([10, 14, 21])]
    sample = slices.sample_slices(volumes, per_volume=10)
    pos = sample.positions
    sim = 1.0 - np.abs(pos[:, None] - pos[None, :])  # similarity = 1 - position gap
    table = slices.similarity_by_distance(sim, sample, bin_width=0.25)
    other = sample.volume[:, None] != sample.volume[None, :]
    assert table["pairs"].sum() == other.sum()
    assert list(table.columns) == ["distance", "low", "high", "mean", "std", "pairs"]
    assert np.all(np.diff(table["mean"]) < 0)  # monotone by construction
    assert np.all((1 - table["mean"] >= table["low"] - 1e-9) & (1 - table["mean"] <= table["high"] + 1e-9))
    with pytest.raises(ValueError):
        slices.similarity_by_distance(sim, sample, bin_width=0)


def test_slice_coordinates_follow_the_canonical_affine():
    affine = np.eye(4)
    affine[:3, 0] = [0.0, 0.0, 2.5]  # slice step: 2.5 mm along world z
    affine[:3, 3] = [10.0, -4.0, -60.0]
    v = make_volume("a", 5, affine=affine)
    np.testing.assert_allclose(slices.slice_coordinates(v), -60.0 + 2.5 * np.arange(5))
    oblique = np.eye(4)
    oblique[:3, 0] = [0.0, 3.0 * np.sin(0.3), 3.0 * np.cos(0.3)]
    oblique[:3, 3] = [0.0, 0.0, 9.0]
    coords = slices.slice_coordinates(make_volume("b", 4, affine=oblique))
    np.testing.assert_allclose(np.diff(coords), 3.0)
    assert coords[0] == pytest.approx(9.0 * np.cos(0.3))
    np.testing.assert_allclose(slices.slice_coordinates(make_volume("c", 4)), [0.0, 3.0, 6.0, 9.0])


def test_field_of_view_table_partitions_tile_each_volume():
    volumes = []
    for i, (z, start) in enumerate([(12, -60.0), (16, -40.0), (9, -66.0)]):
        affine = np.eye(4)
        affine[:3, 0] = [0.0, 0.0, 3.0]
        affine[2, 3] = start
        volumes.append(make_volume(f"v{i}", z, affine=affine))
    table = slices.field_of_view_table(volumes, 3)
    assert list(table["volume"]) == ["v0", "v1", "v2"]
    np.testing.assert_allclose(table["start"], [-60.0, -40.0, -66.0])
    np.testing.assert_allclose(table["start_offset"], [0.0, 20.0, -6.0])
    np.testing.assert_allclose(table["p0_from"], table["start"])
    np.testing.assert_allclose(table["p2_to"], table["end"])
    np.testing.assert_allclose(table["extent"], [36.0, 48.0, 27.0])
    np.testing.assert_allclose(table["p1_from"] - table["p0_to"], 3.0)  # contiguous: next slice


# ----------------------------------------------------------------------------------------------- figures, widgets


def test_chapter_figures_draw():
    from matplotlib.figure import Figure

    from glcl_core.viz import volumes as viz

    volumes = [make_volume(f"v{i}", z, pattern=partition_pattern(4)) for i, z in enumerate([16, 20, 13])]
    sample = slices.sample_slices(volumes, per_volume=8)
    sim = slices.slice_similarity(sample.images)
    figs = [
        viz.plot_slice(volumes[0], 100, n_partitions=4),  # z clipped into range
        viz.plot_partitions(volumes[1], 5),
        viz.plot_field_of_view(volumes, 4),
        viz.plot_partition_means(slices.partition_mean_slices(volumes, 4)),
        viz.plot_slice_similarity(sim, sample, 4, slices.similarity_by_distance(sim, sample),
                                  slices.partition_contrast(sim, sample, 4)),
    ]
    assert all(isinstance(f, Figure) for f in figs)
    assert "z=15" in figs[0].axes[1].get_title() and "partition 3" in figs[0].axes[1].get_title()
    assert len(figs[3].axes) == 2 * 4 + 1  # mean and spread per partition + colour bar
    bars = [p for p in figs[2].axes[0].patches]
    assert len(bars) == 3 * 4  # one bar per partition per volume
    gallery = viz.plot_subject_gallery({"first": volumes, "second": volumes[:2]}, n_subjects=3)
    shown = [ax for ax in gallery.axes if ax.get_visible()]
    assert len(shown) == 2 * 3 + 2 * 2  # image and label rows; the missing third subject of "second" hidden
    assert gallery.axes[0].get_ylabel() == "first" and gallery.axes[0].get_title() == "v0"
    assert len(gallery.axes[3].images) == 2  # label row: image plus label overlay
    assert [t.get_text() for t in gallery.legends[0].get_texts()] == ["class 1"]  # one per foreground class
    named = viz.plot_subject_gallery({"first": volumes}, n_subjects=2, class_names=["background", "tissue"])
    assert [t.get_text() for t in named.legends[0].get_texts()] == ["tissue"]


def test_slice_browser_switches_volume_keeping_relative_position():
    from glcl_core.viz.browse import slice_browser

    volumes = [make_volume("a", 10), make_volume("b", 40)]
    calls = []

    def draw(volume, z, n_partitions, show_label):
        from matplotlib.figure import Figure

        calls.append((volume.name, z, n_partitions, show_label))
        return Figure(figsize=(1, 1))

    box = slice_browser(volumes, n_partitions=4, draw=draw)
    chooser, slider, overlay = box.children[0].children
    assert calls == [("a", 5, 4, True)] and slider.max == 9
    chooser.value = 1
    assert slider.max == 39 and slider.value == 22  # (5 + 0.5) / 10 of 40 slices
    assert calls[-1] == ("b", 22, 4, True) and len(calls) == 2  # one draw per switch
    overlay.value = False
    slider.value = 39
    assert calls[-1] == ("b", 39, 4, False)
    chooser.value = 0
    assert slider.max == 9 and slider.value == 9
    with pytest.raises(ValueError):
        slice_browser(volumes, volume=2)


def test_partition_explorer_limits_s_to_the_shortest_volume():
    from glcl_core.viz.browse import figure_png, partition_explorer

    volumes = [make_volume("a", 6), make_volume("b", 30)]
    box = partition_explorer(volumes, n_partitions=4, max_partitions=12)
    view, chooser, count = box.children[0].children
    assert count.max == 6 and count.value == 4
    view.value = "all volumes"
    assert chooser.disabled
    count.value = 6  # every volume can still be cut
    from matplotlib.figure import Figure

    png = figure_png(Figure(figsize=(1, 1)))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
