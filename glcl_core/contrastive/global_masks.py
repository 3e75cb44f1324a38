"""Global strategies (G^R, G^D-, G^D, PCL) as positive/negative masks over batch metadata, and the global loss.
One embedding per view of a slice; the loss itself is :func:`~glcl_core.contrastive.kernel.masked_info_nce`.

Global (encoder + g1, one embedding per view of a slice; ``N`` = views x slices):

==========  ==============================================================  ==========================  =========
strategy    positives of anchor i                                           negatives (denominator)     reduction
==========  ==============================================================  ==========================  =========
``GR``      same ``image`` (the other view)                                 every other embedding       pairs
``GD-``     same ``image``                                                  a different ``partition``   pairs
``GD``      same ``image``, or same ``partition`` of another ``volume``     a different ``partition``   pairs
``PCL``     ``|position_i - position_j| < threshold``                       every other embedding       anchors
==========  ==============================================================  ==========================  =========

In ``GD-``, same-partition slices of other volumes are neither positive nor negative. In ``GD``, two different
slices of the same partition of the *same* volume (not drawn by the paper's sampler) are neither.

``GD`` pairing (``pairing`` / ``GlobalConfig.gd_pairing``):

* ``"all"`` (paper, default): every other volume of the batch is a partner: the same-partition slices of all other
  volumes, both views, are positives.
* ``"neighbour"`` (GLCL's official code): a volume is paired with its two neighbours on a ring only, and only
  view with view. Volumes take slots ``0..m-1`` in the order their first row appears in the batch (the
  :class:`~glcl_core.samplers.PartitionSampler`'s draw order; under torchrun the gathered batch keeps it, since
  ranks hold contiguous runs of volumes); slot ``j``'s partners are ``j - 1`` and ``j + 1`` modulo ``m``. A row's
  view is the rank of its occurrence among the rows of its ``image`` (first row 0, second row 1). Same-partition
  slices of other volumes that are not partners are neither positive nor negative (they share the anchor's
  partition, so they are no negatives either), as in the official code.

  The official code (``stitch_batch_global_loss_gd`` and the ``global_loss_exp_no == 2`` loss of its
  ``models.py``) stitches blocks of ``S`` original slices of one volume then the same ``S`` slices augmented, and
  pairs block ``k`` with block ``k + 1`` (indices taken modulo the batch, hence a ring): original with original,
  augmented with augmented. Its two "views" are the un-augmented image and one crop + intensity augmentation; here
  both views are augmented. Its batch also holds all-zero images in 16 of 48 slots, which take part in the ring.

Share of the same-slice term under the ``pairs`` reduction (every positive pair counts once; with ``m`` volumes and
2 views each anchor has 1 same-slice positive and ``c`` positives from other volumes, so the same-slice term
carries ``1 / (1 + c)`` of the loss):

* ``"all"``: ``c = 2 (m - 1)``, share ``1 / (2m - 1)`` (m = 6: 1/11; m = 3: 1/5).
* ``"neighbour"``: ``c = min(2, m - 1)``, share ``1/3`` for ``m >= 3`` (1/2 for m = 2).
* The official code itself adds the same-slice term of each block twice (once as its own anchor block, once as
  the partner of the previous block) and each cross-volume pair once per direction, so there the same-slice term
  carries ``2 / (2 + 2) = 1/2`` of its loss; the masks here count every positive pair once.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from glcl_core.batch import to_device
from glcl_core.contrastive.kernel import masked_info_nce

GLOBAL_STRATEGIES = ("GR", "GD-", "GD", "PCL")
GLOBAL_REDUCTION = {"GR": "pairs", "GD-": "pairs", "GD": "pairs", "PCL": "anchors"}
GD_PAIRINGS = ("all", "neighbour")  # paper (every other volume) | official code (ring neighbours, view with view)

__all__ = [
    "GLOBAL_STRATEGIES",
    "GLOBAL_REDUCTION",
    "GD_PAIRINGS",
    "global_masks",
    "global_loss",
]


def _check_strategy(strategy: str, valid: tuple[str, ...], kind: str) -> None:
    if strategy not in valid:
        raise ValueError(f"unknown {kind} strategy {strategy!r}; valid: {', '.join(valid)}")


def _metadata_vector(x: Any, name: str, n: int | None, device: torch.device | None) -> torch.Tensor:
    if x is None:
        raise ValueError(f"this strategy needs the {name!r} metadata, got None")
    t = torch.as_tensor(x, device=device)
    if t.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor (N,), got shape {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"{name} has {t.shape[0]} entries, expected {n}")
    return t


def global_masks(
    strategy: str,
    image: torch.Tensor | None,
    volume: torch.Tensor | None,
    partition: torch.Tensor | None,
    position: torch.Tensor | None,
    threshold: float = 0.1,
    pairing: str = "all",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative masks of a global strategy.

    Args:
        strategy: one of :data:`GLOBAL_STRATEGIES`.
        image, volume, partition, position: ``(N,)`` metadata (views of one slice share ``image``). Only those the
            strategy reads are required (GR: image; GD-: image, partition; GD: image, volume, partition;
            PCL: position); the others may be ``None``. ``position`` should be float64, as the samplers give it
            (PCL's code compares float64 positions): it is compared in float64, and a float32 input has already
            been rounded, which flips pairs where ``threshold * Z`` is an integer.
        threshold: PCL's position threshold (0.1 CHD, 0.35 ACDC).
        pairing: GD only, one of :data:`GD_PAIRINGS`: ``"all"`` (paper: every other volume is a partner) or
            ``"neighbour"`` (official code: ring neighbours in order of first appearance, view with view); see
            the module docstring.

    Returns:
        ``positives, negatives``: ``(N, N)`` bool on the metadata's device, diagonals False.
    """
    _check_strategy(strategy, GLOBAL_STRATEGIES, "global")
    if pairing not in GD_PAIRINGS:
        raise ValueError(f"unknown GD pairing {pairing!r}; valid: {', '.join(GD_PAIRINGS)}")
    first = next((m for m in (image, volume, partition, position) if m is not None), None)
    if first is None:
        raise ValueError("global_masks needs metadata, got only None")
    device = torch.as_tensor(first).device
    n = None

    def vec(x, name):
        nonlocal n
        t = _metadata_vector(x, name, n, device)
        n = t.shape[0]
        return t

    if strategy == "PCL":
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
            raise ValueError(f"PCL threshold must be a number > 0, got {threshold!r}")
        # on the positions' own device (the CPU on Apple MPS, which has no float64), then the bool mask moves
        pos = _metadata_vector(position, "position", None, None)
        pos = (pos.cpu() if pos.device.type == "mps" else pos).to(torch.float64)
        n = pos.shape[0]
        others = ~torch.eye(n, dtype=torch.bool, device=device)
        positives = ((pos[:, None] - pos[None, :]).abs() < threshold).to(device) & others
        return positives, others

    img = vec(image, "image")
    others = ~torch.eye(n, dtype=torch.bool, device=device)
    same_image = (img[:, None] == img[None, :]) & others
    if strategy == "GR":
        return same_image, others

    part = vec(partition, "partition")
    if (part < 0).any():
        raise ValueError(f"{strategy} needs slices drawn by partition (partition >= 0); got partition -1")
    other_partition = part[:, None] != part[None, :]
    if strategy == "GD-":
        return same_image, other_partition
    vol = vec(volume, "volume")
    same_partition_other_volume = (part[:, None] == part[None, :]) & (vol[:, None] != vol[None, :])
    if pairing == "neighbour":
        slot = _appearance_slots(vol)  # (N,) volume slot 0..m-1
        m = int(slot.max()) + 1
        gap = (slot[:, None] - slot[None, :]) % m
        ring = (gap != 0) & ((gap == 1) | (gap == m - 1))
        view = _occurrence_index(img)  # (N,) 0 for a slice's first row, 1 for its second
        same_partition_other_volume &= ring & (view[:, None] == view[None, :])
    return same_image | same_partition_other_volume, other_partition


def _appearance_slots(ids: torch.Tensor) -> torch.Tensor:
    """``(N,)`` int64: the rank of each row's id among the distinct ids, ordered by first appearance."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    n = ids.shape[0]
    rows = torch.arange(n, device=ids.device)
    first = torch.full((unique.shape[0],), n, dtype=torch.int64, device=ids.device)
    first = first.scatter_reduce(0, inverse, rows, reduce="amin")
    rank = torch.empty_like(first)
    rank[first.argsort()] = torch.arange(unique.shape[0], device=ids.device)
    return rank[inverse]


def _occurrence_index(ids: torch.Tensor) -> torch.Tensor:
    """``(N,)`` int64: how many earlier rows share each row's id (0 for the first view of a slice, 1 for the second)."""
    same = ids[:, None] == ids[None, :]
    earlier = torch.ones_like(same).tril(-1)
    return (same & earlier).sum(dim=1)


def _metadata(batch_or_metadata: Any) -> dict[str, Any]:
    names = ("image", "volume", "partition", "position")
    if isinstance(batch_or_metadata, Mapping):
        return {k: batch_or_metadata.get(k) for k in names}
    if all(hasattr(batch_or_metadata, k) for k in names):
        return {k: getattr(batch_or_metadata, k) for k in names}
    raise TypeError(
        "batch_or_metadata must be a Batch (or any object with image/volume/partition/position attributes) "
        f"or a mapping with those keys, got {type(batch_or_metadata).__name__}"
    )


def global_loss(
    z: torch.Tensor,
    batch_or_metadata: Any,
    strategy: str,
    temperature: float = 0.1,
    threshold: float = 0.1,
    pairing: str = "all",
) -> torch.Tensor:
    """Global contrastive loss of ``strategy`` over embeddings ``z: (N, D)`` of a batch's ``N`` views.

    ``batch_or_metadata``: a :class:`glcl_core.batch.Batch` or a mapping with ``(N,)`` ``image``, ``volume``,
    ``partition``, ``position``. Uses the reduction of :data:`GLOBAL_REDUCTION`. ``pairing``: GD's partners
    (:data:`GD_PAIRINGS`, see :func:`global_masks`).
    """
    _check_strategy(strategy, GLOBAL_STRATEGIES, "global")
    meta = _metadata(batch_or_metadata)
    if not isinstance(z, torch.Tensor) or z.dim() != 2:
        raise ValueError(f"z must be (N, D), got {getattr(z, 'shape', type(z).__name__)}")
    meta = {k: (None if v is None else to_device(torch.as_tensor(v), z.device)) for k, v in meta.items()}
    for k, v in meta.items():
        if v is not None and v.shape[:1] != z.shape[:1]:
            raise ValueError(f"{k} has {v.shape[0] if v.dim() else 0} entries but z has {z.shape[0]} embeddings")
    positives, negatives = global_masks(strategy, **meta, threshold=threshold, pairing=pairing)
    return masked_info_nce(z, positives, negatives, temperature, GLOBAL_REDUCTION[strategy])
