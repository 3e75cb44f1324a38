"""Samplers: batch composition, metadata, determinism, resume."""
from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch

from glcl_core.data.volume import DataError, Volume
from glcl_core.samplers import LabelledSliceSampler, PartitionSampler, RandomSliceSampler


def make_volumes(slices=(9, 12, 10, 7, 13), hw=(32, 32), labelled=True, seed=0) -> list[Volume]:
    rng = np.random.default_rng(seed)
    vols = []
    for i, z in enumerate(slices):
        image = rng.random((z, *hw), dtype=np.float32)
        label = None
        if labelled:
            label = np.zeros((z, *hw), dtype=np.int64)
            # foreground only in the middle slices
            label[z // 3 : 2 * z // 3, 8:20, 8:20] = 1 + i % 3
        vols.append(Volume(f"vol{i}", image, label, (1.0, 1.0, 1.0)))
    return vols


def slice_of(volumes, sampler, gid: int) -> tuple[int, int]:
    """Global slice id -> (volume index, slice index)."""
    v = int(torch.searchsorted(sampler.offsets, torch.tensor(gid), right=True)) - 1
    return v, gid - int(sampler.offsets[v])


def check_metadata_matches_volumes(batch, volumes, sampler, n_partitions):
    for row in range(len(batch)):
        v, k = slice_of(volumes, sampler, int(batch.image[row]))
        vol = volumes[v]
        assert int(batch.volume[row]) == v
        assert np.array_equal(batch.images[row, 0].numpy(), vol.image[k])
        # float64, bit for bit PCL's float(k + 1) / Z
        assert batch.position.dtype == torch.float64 and float(batch.position[row]) == float(k + 1) / vol.n_slices
        if n_partitions is None:
            assert int(batch.partition[row]) == -1
        else:
            assert int(batch.partition[row]) == int(vol.partitions(n_partitions)[k])
        if batch.labels is not None:
            assert np.array_equal(batch.labels[row].numpy(), vol.label[k])


def test_random_sampler_composition_and_metadata():
    volumes = make_volumes()
    sampler = RandomSliceSampler(volumes, batch_size=16, seed=1)
    batch = sampler.sample()
    assert batch.images.shape == (16, 1, 32, 32) and batch.images.dtype == torch.float32
    assert batch.labels is None
    assert batch.image.unique().numel() == 16  # distinct slices
    assert batch.images.device.type == "cpu"
    check_metadata_matches_volumes(batch, volumes, sampler, 4)
    # Over many batches every volume shows up.
    seen = torch.cat([sampler.sample().volume for _ in range(20)])
    assert set(seen.tolist()) == set(range(len(volumes)))


def test_random_sampler_with_labels_and_no_partitions():
    volumes = make_volumes()
    sampler = RandomSliceSampler(volumes, batch_size=8, seed=0, n_partitions=None, with_labels=True)
    batch = sampler.sample()
    assert batch.labels.shape == (8, 32, 32) and batch.labels.dtype == torch.int64
    check_metadata_matches_volumes(batch, volumes, sampler, None)
    with pytest.raises(ValueError, match="no labels"):
        RandomSliceSampler(make_volumes(labelled=False), 4, with_labels=True)


def test_partition_sampler_composition():
    volumes = make_volumes()
    m, s = 3, 4
    sampler = PartitionSampler(volumes, n_volumes=m, n_partitions=s, seed=0)
    assert sampler.batch_size == 12
    for _ in range(10):
        batch = sampler.sample()
        assert len(batch) == m * s
        assert batch.volume.unique().numel() == m
        for v in batch.volume.unique():
            rows = batch.volume == v
            assert sorted(batch.partition[rows].tolist()) == list(range(s))
        # volume-major order: row i*S + s is partition s
        assert torch.equal(batch.partition, torch.arange(s).repeat(m))
        assert batch.image.unique().numel() == m * s
        check_metadata_matches_volumes(batch, volumes, sampler, s)


def test_partition_sampler_covers_every_slice():
    volumes = make_volumes(slices=(5, 6))
    sampler = PartitionSampler(volumes, n_volumes=2, n_partitions=2, seed=3)
    seen = set(torch.cat([sampler.sample().image for _ in range(60)]).tolist())
    assert seen == set(range(11))


def test_labelled_sampler():
    volumes = make_volumes(slices=(6, 9))
    unlabelled = make_volumes(slices=(8,), labelled=False)
    mixed = [unlabelled[0], *volumes]  # the unlabelled volume is index 0 and must never be drawn
    sampler = LabelledSliceSampler(mixed, batch_size=20, seed=0)  # more than 15 labelled slices: replacement
    batch = sampler.sample()
    assert len(batch) == 20 and batch.labels.dtype == torch.int64
    assert set(batch.volume.tolist()) <= {1, 2}
    for row in range(len(batch)):
        v = int(batch.volume[row])
        k = int(batch.image[row]) - int(sampler.offsets[v - 1])
        assert np.array_equal(batch.labels[row].numpy(), mixed[v].label[k])
        assert np.array_equal(batch.images[row, 0].numpy(), mixed[v].image[k])
    small = LabelledSliceSampler(volumes, batch_size=10, seed=0)
    assert small.sample().image.unique().numel() == 10  # distinct when possible

    fg = LabelledSliceSampler(volumes, batch_size=10, seed=0, foreground_fraction=0.5)
    for _ in range(5):
        b = fg.sample()
        has_fg = b.labels.flatten(1).amax(1) > 0
        assert has_fg[:5].all()
    with pytest.raises(ValueError, match="labelled volume"):
        LabelledSliceSampler(unlabelled, batch_size=4)


@pytest.mark.parametrize(
    "factory",
    [
        lambda v, seed: RandomSliceSampler(v, 8, seed=seed),
        lambda v, seed: PartitionSampler(v, 2, 4, seed=seed),
        lambda v, seed: LabelledSliceSampler(v, 8, seed=seed, foreground_fraction=0.25),
    ],
    ids=["random", "partition", "labelled"],
)
def test_determinism_and_resume(factory):
    volumes = make_volumes()
    s1, s2, s3 = factory(volumes, 5), factory(volumes, 5), factory(volumes, 6)
    run1 = [s1.sample().image for _ in range(6)]
    run2 = [s2.sample().image for _ in range(6)]
    run3 = [s3.sample().image for _ in range(6)]
    assert all(torch.equal(x, y) for x, y in zip(run1, run2))
    assert not all(torch.equal(x, y) for x, y in zip(run1, run3))
    assert not all(torch.equal(run1[0], b) for b in run1[1:])  # batches change over time

    # Resume after 3 batches, through torch.save / torch.load(weights_only=True).
    first = factory(volumes, 5)
    for _ in range(3):
        first.sample()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = factory(volumes, 123)  # the seed is restored from the state
    resumed.load_state_dict(state)
    assert resumed.batches_drawn == 3
    for expected in run1[3:]:
        assert torch.equal(resumed.sample().image, expected)

    with pytest.raises(ValueError, match="does not match"):
        factory(make_volumes(slices=(9, 12, 10)), 5).load_state_dict(state)


def test_iterator_is_infinite_and_matches_sample():
    volumes = make_volumes()
    batches = list(itertools.islice(iter(RandomSliceSampler(volumes, 4, seed=2)), 25))
    assert len(batches) == 25
    other = RandomSliceSampler(volumes, 4, seed=2)
    assert all(torch.equal(b.image, other.sample().image) for b in batches)


def test_construction_errors():
    volumes = make_volumes()
    odd = make_volumes(slices=(9,), hw=(32, 30))
    with pytest.raises(ValueError, match="in-plane size"):
        RandomSliceSampler(volumes + odd, 4)
    with pytest.raises(ValueError, match="batch_size"):
        RandomSliceSampler(volumes, 1000)
    with pytest.raises(ValueError, match="n_volumes"):
        PartitionSampler(volumes, n_volumes=6, n_partitions=4)
    with pytest.raises(DataError, match="cannot be cut into 8 partitions"):
        PartitionSampler(volumes, n_volumes=2, n_partitions=8)
    with pytest.raises(ValueError, match="at least one volume"):
        RandomSliceSampler([], 4)
