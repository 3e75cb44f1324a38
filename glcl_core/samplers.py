"""Batch samplers: unique 2D slices and their metadata from a list of :class:`~glcl_core.data.volume.Volume`.

Samplers return un-augmented :class:`~glcl_core.batch.Batch` objects on the CPU (the training loop moves them
to the device and augments there). All slices are stacked once into one tensor, so a batch is a single gather.
Each sampler is an infinite iterator with ``sample()`` for one batch, deterministic for a given seed, and
``state_dict()`` / ``load_state_dict()`` so that a resumed run draws exactly the batches it would have drawn.

Several processes (:mod:`glcl_core.distributed`): ``sampler.shard(rank, world_size)`` makes each rank return only
its part of every global batch. All ranks draw the same global batch from the same seed and keep disjoint
contiguous parts of it (whole volumes for :class:`PartitionSampler`; parts differ by at most one slice or volume
when the batch does not divide evenly), so the union over ranks is exactly the batch a single process would draw,
and the saved state is the same on every rank.

* :class:`RandomSliceSampler` - G^R and PCL: ``batch_size`` distinct slices drawn from all volumes.
* :class:`PartitionSampler` - G^D-, G^D, L^D: ``n_volumes`` distinct volumes x one slice per partition.
* :class:`LabelledSliceSampler` - fine-tuning: random labelled slices, optionally enriched in foreground.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from .batch import Batch
from .data.volume import Volume


class _SliceSampler:
    """Shared storage: every slice of every volume, stacked, with per-slice metadata.

    Attributes:
        images: ``(N, 1, H, W)`` float32, all slices in volume order.
        labels: ``(N, H, W)`` int64 or None.
        slice_volume: ``(N,)`` int64 index of the volume (position in the list given).
        slice_partition: ``(N,)`` int64 partition of the slice within its volume (-1 if ``n_partitions`` is None).
        slice_position: ``(N,)`` float64 ``(k + 1) / Z`` (float64 as in PCL's code; see ``Volume.positions``).
        offsets: ``(M + 1,)`` int64, slices of volume ``i`` are ``offsets[i]:offsets[i+1]``.
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        seed: int,
        n_partitions: int | None,
        with_labels: bool,
    ) -> None:
        volumes = list(volumes)
        if not volumes:
            raise ValueError(f"{type(self).__name__} needs at least one volume")
        shapes = {tuple(v.image.shape[1:]) for v in volumes}
        if len(shapes) != 1:
            listing = ", ".join(f"{v.name}: {tuple(v.image.shape[1:])}" for v in volumes[:6])
            raise ValueError(f"all volumes must share the in-plane size (H, W); got {listing}")
        if with_labels:
            unlabelled = [v.name for v in volumes if v.label is None]
            if unlabelled:
                raise ValueError(f"with_labels=True but these volumes have no labels: {', '.join(unlabelled[:6])}")
        self.n_volumes_total = len(volumes)
        self.volume_names = [v.name for v in volumes]
        self.n_partitions = n_partitions
        self.seed = int(seed)
        sizes = np.array([v.n_slices for v in volumes], dtype=np.int64)
        self.offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(sizes)]))
        stacked = np.concatenate([np.asarray(v.image, dtype=np.float32) for v in volumes])
        self.images = torch.from_numpy(stacked)[:, None]
        self.labels = (
            torch.from_numpy(np.concatenate([np.asarray(v.label, dtype=np.int64) for v in volumes]))
            if with_labels else None
        )
        self.slice_volume = torch.from_numpy(np.repeat(np.arange(len(volumes), dtype=np.int64), sizes))
        self.slice_position = torch.from_numpy(np.concatenate([v.positions for v in volumes]).astype(np.float64))
        if n_partitions is None:
            self.slice_partition = torch.full((int(sizes.sum()),), -1, dtype=torch.int64)
        else:
            self.slice_partition = torch.from_numpy(np.concatenate([v.partitions(n_partitions) for v in volumes]))
        self.generator = torch.Generator().manual_seed(self.seed)
        self.batches_drawn = 0
        self.rank, self.world_size = 0, 1

    @property
    def n_slices(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def _gather(self, index: torch.Tensor) -> Batch:
        """``index: (B,)`` global slice ids -> a :class:`Batch` (``image`` = the global slice id)."""
        return Batch(
            images=self.images.index_select(0, index),
            labels=None if self.labels is None else self.labels.index_select(0, index),
            image=index.clone(),
            volume=self.slice_volume.index_select(0, index),
            partition=self.slice_partition.index_select(0, index),
            position=self.slice_position.index_select(0, index),
        )

    def _draw(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _shard_units(self) -> tuple[str, int]:
        """``(setting, count)``: the units of a global batch that are dealt out to ranks (here: slices)."""
        return "batch_size", int(self.batch_size)  # type: ignore[attr-defined]

    def shard(self, rank: int, world_size: int) -> "_SliceSampler":
        """Return only rank ``rank``'s part of each global batch; returns self.

        The units of a global batch (``batch_size`` slices, or the ``n_volumes`` volumes of a partition batch) are
        dealt in contiguous runs whose sizes differ by at most one (equal when they divide evenly, the fast case);
        every rank needs at least one.
        """
        rank, world_size = int(rank), int(world_size)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        name, count = self._shard_units()
        if count < world_size:
            raise ValueError(
                f"{type(self).__name__}: {name}={count} cannot be shared among {world_size} processes "
                f"(each needs at least one); use {name} >= {world_size}"
            )
        self.rank, self.world_size = rank, world_size
        return self

    def shard_bounds(self) -> tuple[int, int]:
        """This rank's units ``[lo, hi)`` of a global batch (all of them before :meth:`shard`)."""
        _, count = self._shard_units()
        return self.rank * count // self.world_size, (self.rank + 1) * count // self.world_size

    def sample(self) -> Batch:
        """The next batch (advances the random state); this rank's part of it after :meth:`shard`."""
        index = self._draw()
        if self.world_size > 1:
            rows = index.numel() // self._shard_units()[1]  # rows per unit: 1, or S for a volume's partitions
            lo, hi = self.shard_bounds()
            index = index[lo * rows:hi * rows]
        batch = self._gather(index)
        self.batches_drawn += 1
        return batch

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.sample()

    # Resuming: the generator state reproduces every following draw exactly.
    def _fingerprint(self) -> dict:
        return {"kind": type(self).__name__, "n_slices": self.n_slices, "n_volumes": self.n_volumes_total}

    def state_dict(self) -> dict:
        """Plain dict (tensors, ints, strings) for ``torch.save``."""
        return {**self._fingerprint(), "seed": self.seed, "batches_drawn": self.batches_drawn,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        expected = self._fingerprint()
        found = {k: state.get(k) for k in expected}
        if found != expected:
            raise ValueError(f"sampler state does not match this sampler: saved {found}, this one {expected}")
        self.seed = int(state["seed"])
        self.batches_drawn = int(state["batches_drawn"])
        self.generator.set_state(state["generator"])


class RandomSliceSampler(_SliceSampler):
    """``batch_size`` distinct slices drawn uniformly from all volumes (G^R, PCL).

    Metadata: ``image`` = global slice index, ``volume``, ``partition`` (``Volume.partitions(n_partitions)``;
    -1 if ``n_partitions`` is None), ``position`` (``Volume.positions``).
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        batch_size: int,
        seed: int = 0,
        n_partitions: int | None = 4,
        with_labels: bool = False,
    ) -> None:
        super().__init__(volumes, seed, n_partitions, with_labels)
        if not 1 <= batch_size <= self.n_slices:
            raise ValueError(f"batch_size must be in 1..{self.n_slices} (number of slices), got {batch_size}")
        self.batch_size = int(batch_size)

    def _draw(self) -> torch.Tensor:
        return torch.randperm(self.n_slices, generator=self.generator)[: self.batch_size]

    def _fingerprint(self) -> dict:
        return {**super()._fingerprint(), "batch_size": self.batch_size}


class PartitionSampler(_SliceSampler):
    """``n_volumes`` distinct volumes x ``n_partitions`` partitions, one random slice from each partition
    (G^D-, G^D, L^D). Batch size ``B = n_volumes * n_partitions``, ordered volume-major: row ``i * S + s`` is
    partition ``s`` of the ``i``-th sampled volume.
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        n_volumes: int,
        n_partitions: int = 4,
        seed: int = 0,
        with_labels: bool = False,
    ) -> None:
        if n_partitions is None or int(n_partitions) < 1:
            raise ValueError(f"n_partitions must be >= 1, got {n_partitions}")
        super().__init__(volumes, seed, int(n_partitions), with_labels)
        if not 1 <= n_volumes <= self.n_volumes_total:
            raise ValueError(f"n_volumes must be in 1..{self.n_volumes_total} (volumes given), got {n_volumes}")
        self.n_volumes = int(n_volumes)
        s = int(n_partitions)
        # First slice and slice count of every partition of every volume: (M, S).
        starts = torch.zeros(self.n_volumes_total, s, dtype=torch.int64)
        counts = torch.zeros(self.n_volumes_total, s, dtype=torch.int64)
        for i in range(self.n_volumes_total):
            lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
            part = self.slice_partition[lo:hi]
            counts[i] = torch.bincount(part, minlength=s)
            starts[i] = lo + torch.cumsum(counts[i], 0) - counts[i]
        self.partition_start = starts
        self.partition_count = counts

    @property
    def batch_size(self) -> int:
        return self.n_volumes * int(self.n_partitions)

    def _draw(self) -> torch.Tensor:
        chosen = torch.randperm(self.n_volumes_total, generator=self.generator)[: self.n_volumes]
        u = torch.rand(self.n_volumes, int(self.n_partitions), generator=self.generator, dtype=torch.float64)
        counts = self.partition_count[chosen]
        within = torch.minimum((u * counts).long(), counts - 1)
        return (self.partition_start[chosen] + within).reshape(-1)

    def _shard_units(self) -> tuple[str, int]:
        return "n_volumes", self.n_volumes  # a volume's S slices stay on one rank

    def _fingerprint(self) -> dict:
        return {**super()._fingerprint(), "n_volumes_per_batch": self.n_volumes, "n_partitions": self.n_partitions}


class LabelledSliceSampler(_SliceSampler):
    """Random labelled slices for fine-tuning: distinct slices when there are enough, else drawn with
    replacement (a single labelled volume may have fewer slices than a batch). ``foreground_fraction`` of each
    batch is drawn (with replacement) from slices containing any label > 0, useful when most slices are
    background; the rest uniformly from all slices.

    Volumes without labels are ignored; ``volume`` metadata still refers to positions in the list given.
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        batch_size: int,
        seed: int = 0,
        foreground_fraction: float = 0.0,
        n_partitions: int | None = None,
    ) -> None:
        volumes = list(volumes)
        labelled = [i for i, v in enumerate(volumes) if v.label is not None]
        if not labelled:
            raise ValueError("LabelledSliceSampler needs at least one labelled volume")
        super().__init__([volumes[i] for i in labelled], seed, n_partitions, with_labels=True)
        self.slice_volume = torch.as_tensor(labelled, dtype=torch.int64)[self.slice_volume]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        self.batch_size = int(batch_size)
        self.foreground_fraction = float(foreground_fraction)
        self.foreground_slices = torch.nonzero(self.labels.flatten(1).amax(dim=1) > 0).flatten()
        self.n_foreground = round(self.foreground_fraction * self.batch_size) if len(self.foreground_slices) else 0

    def _draw(self) -> torch.Tensor:
        n_rest = self.batch_size - self.n_foreground
        if n_rest <= self.n_slices:  # distinct slices when there are enough of them
            rest = torch.randperm(self.n_slices, generator=self.generator)[:n_rest]
        else:
            rest = torch.randint(0, self.n_slices, (n_rest,), generator=self.generator)
        if self.n_foreground == 0:
            return rest
        pick = torch.randint(0, len(self.foreground_slices), (self.n_foreground,), generator=self.generator)
        return torch.cat([self.foreground_slices[pick], rest])

    def _fingerprint(self) -> dict:
        return {**super()._fingerprint(), "batch_size": self.batch_size,
                "foreground_fraction": self.foreground_fraction}
