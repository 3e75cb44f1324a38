"""Volume: slice positions and partitions (the metadata GD-, GD and PCL rely on)."""
from __future__ import annotations

import numpy as np
import pytest

from glcl_core.data import DataError, Volume


def make_volume(n_slices: int, labelled: bool = True) -> Volume:
    image = np.zeros((n_slices, 6, 5), dtype=np.float32)
    label = np.zeros((n_slices, 6, 5), dtype=np.int64) if labelled else None
    return Volume("v", image, label, (3.0, 1.0, 1.0), source="/data/v.nii.gz")


@pytest.mark.parametrize("n_slices", [1, 2, 7, 33])
def test_positions_are_monotone_in_unit_interval(n_slices):
    positions = make_volume(n_slices).positions
    assert positions.shape == (n_slices,)
    assert positions.dtype == np.float64  # as PCL's code: float(k + 1) / Z
    assert positions.tolist() == [float(k + 1) / n_slices for k in range(n_slices)]
    assert np.all(np.diff(positions) > 0)
    assert positions.min() > 0 and positions.max() == pytest.approx(1.0)
    assert positions[0] == pytest.approx(1.0 / n_slices)


@pytest.mark.parametrize("n_partitions", [1, 2, 3, 4, 6])
def test_partitions_are_contiguous_complete_and_near_equal(n_partitions):
    for n_slices in range(n_partitions, 41):
        parts = make_volume(n_slices).partitions(n_partitions)
        assert parts.shape == (n_slices,) and parts.dtype == np.int64
        assert np.all(np.diff(parts) >= 0), "partitions must be monotone along the slice axis"
        assert np.all(np.diff(parts) <= 1), "partitions must be contiguous"
        sizes = np.bincount(parts, minlength=n_partitions)
        assert len(sizes) == n_partitions and sizes.min() >= 1
        assert sizes.max() - sizes.min() <= 1, (n_slices, sizes)


def test_partitions_follow_positions():
    volume = make_volume(17)
    parts, positions = volume.partitions(4), volume.positions
    start = positions - 1.0 / 17  # k / Z: the slice's lower edge along the normalised axis
    for s in range(4):
        inside = start[parts == s]
        assert inside.min() >= s / 4 - 1e-6 and inside.max() < (s + 1) / 4
    assert np.all(np.diff(parts[np.argsort(positions)]) >= 0)


def test_too_few_slices_for_partitions_is_a_data_error_naming_the_file():
    with pytest.raises(DataError, match="/data/v.nii.gz"):
        make_volume(3).partitions(4)
    with pytest.raises(ValueError):
        make_volume(3).partitions(0)


def test_volume_rejects_bad_shapes():
    with pytest.raises(DataError, match="label shape"):
        Volume("v", np.zeros((3, 4, 4), np.float32), np.zeros((3, 4, 5), np.int64), (1.0, 1.0, 1.0), "x.nii")
    with pytest.raises(DataError, match=r"\(Z, H, W\)"):
        Volume("v", np.zeros((4, 4), np.float32), None, (1.0, 1.0, 1.0), "x.nii")


def test_repr_is_short_and_says_labelled():
    text = repr(make_volume(5))
    assert "shape=(5, 6, 5)" in text and "labelled" in text and len(text) < 120
    assert "unlabelled" in repr(make_volume(5, labelled=False))


def test_plot_volume_returns_a_figure_with_partition_colours():
    from matplotlib.figure import Figure

    from glcl_core.viz import partition_colours, plot_volume

    rng = np.random.default_rng(0)
    image = rng.random((13, 16, 16)).astype(np.float32)
    label = (rng.random((13, 16, 16)) * 4).astype(np.int64)
    volume = Volume("brain", image, label, (3.0, 2.0, 2.0), source="/data/brain.nii.gz")
    fig = plot_volume(volume, n_partitions=4, n_slices=8)
    assert isinstance(fig, Figure)
    slice_axes = [ax for ax in fig.axes if ax.get_title().startswith("z=")]
    assert len(slice_axes) == 8
    colours = partition_colours(4)
    for ax in slice_axes:
        z = int(ax.get_title().split()[0][2:])
        part = volume.partitions(4)[z]
        assert np.allclose(ax.spines["top"].get_edgecolor(), colours[part])
    with pytest.raises(DataError):
        plot_volume(make_volume(3), n_partitions=4)
