"""What a batch's contrastive masks ask of the encoder: positives, negatives and ignored pairs per anchor,
and the loss at chance level (all similarities equal), per global strategy and, for PCL, per threshold.

* :func:`batch_table`, :func:`slices_table`, :func:`mask_summary`, :func:`chance_loss`,
  :func:`strategy_chance_loss` and :func:`threshold_table` describe a batch's contrastive masks.

The embeddings themselves are analysed in :mod:`glcl_core.analysis.embeddings`. Figures are in
:mod:`glcl_core.viz.embeddings`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from glcl_core.data.volume import Volume

__all__ = [
    "batch_table",
    "slices_table",
    "mask_summary",
    "chance_loss",
    "strategy_chance_loss",
    "threshold_table",
]


# ------------------------------------------------------------------------------------------- batches and masks
def batch_table(batch) -> pd.DataFrame:
    """A batch's metadata as a table: ``image``, ``view`` (0 for the first occurrence of an image id, 1 for the
    second, ...), ``volume``, ``partition``, ``position``. Accepts a :class:`~glcl_core.batch.Batch` or a mapping."""
    get = (lambda k: batch[k]) if isinstance(batch, Mapping) else (lambda k: getattr(batch, k))
    table = pd.DataFrame({k: torch.as_tensor(get(k)).cpu().numpy() for k in ("image", "volume", "partition",
                                                                          "position")})
    table.insert(1, "view", table.groupby("image").cumcount())
    table["position"] = table["position"].astype(np.float64)
    return table


def _as_bool(mask) -> np.ndarray:
    m = torch.as_tensor(mask).cpu().numpy() if not isinstance(mask, np.ndarray) else mask
    m = np.asarray(m, dtype=bool)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"masks must be square (N, N), got shape {m.shape}")
    return m


def chance_loss(positives, negatives, reduction: str = "pairs") -> float:
    """The loss of :func:`~glcl_core.contrastive.kernel.masked_info_nce` when all similarities are equal (an untrained,
    collapsed or random-guess embedding): each positive pair ``(i, p)`` contributes ``log(1 + n_ip)`` with
    ``n_ip`` the denominator entries of ``i`` other than ``i`` and ``p``, averaged with ``reduction`` ("pairs",
    GLCL's; "anchors", PCL's). ``positives, negatives``: ``(N, N)`` bool tensors or arrays.
    Computed by :func:`glcl_core.contrastive.health.chance_level`."""
    from glcl_core.contrastive.health import chance_level

    pos, neg = torch.as_tensor(_as_bool(positives)), torch.as_tensor(_as_bool(negatives))
    if not bool((pos & ~torch.eye(len(pos), dtype=torch.bool)).any()):
        raise ValueError("no positive pair in the masks")
    return chance_level(pos, neg, reduction)


def mask_summary(masks: Mapping[str, tuple]) -> pd.DataFrame:
    """Per strategy, what each anchor sees: mean numbers of ``positives``, ``negatives`` (denominator entries that
    are not positives), ``ignored`` (neither), the number of positive ``pairs`` and the :func:`chance_loss`.

    ``masks``: ``name -> (positives, negatives)``, ``(N, N)`` bool tensors or arrays (e.g. from
    :func:`~glcl_core.contrastive.global_masks.global_masks`).
    """
    rows = {}
    for name, (positives, negatives) in masks.items():
        pos, neg = _as_bool(positives).copy(), _as_bool(negatives).copy()
        np.fill_diagonal(pos, False)
        np.fill_diagonal(neg, False)
        others = ~np.eye(len(pos), dtype=bool)
        rows[name] = {
            "embeddings": len(pos),
            "positives": pos.sum(axis=1).mean(),
            "negatives": (neg & ~pos).sum(axis=1).mean(),
            "ignored": (others & ~pos & ~neg).sum(axis=1).mean(),
            "pairs": int(pos.sum()),
            "chance loss": chance_loss(pos, neg) if pos.any() else float("nan"),
        }
    return pd.DataFrame(rows).T.astype({"embeddings": int, "pairs": int})


def slices_table(volumes: Sequence[Volume], n_partitions: int = 4, views: int = 2) -> pd.DataFrame:
    """The metadata of a batch holding every slice of ``volumes`` in ``views`` views (all first views, then all
    second views, like :func:`~glcl_core.augment.make_views`): the columns of :func:`batch_table`."""
    rows = []
    image = 0
    for i, v in enumerate(volumes):
        for k in range(v.n_slices):
            rows.append({"image": image, "volume": i, "partition": int(v.partitions(n_partitions)[k]),
                         "position": float(v.positions[k])})
            image += 1
    one = pd.DataFrame(rows)
    table = pd.concat([one] * int(views), ignore_index=True)
    table.insert(1, "view", np.repeat(np.arange(int(views)), len(one)))
    return table


def strategy_chance_loss(strategy: str, cfg) -> float:
    """:func:`chance_loss` of a global strategy for the batch shape of ``cfg`` (a
    :class:`~glcl_core.train.config.RunConfig`): ``global_.batch_size`` slices for G^R and PCL,
    ``global_.n_volumes`` x S for G^D- and G^D, two views each. It depends only on these sizes (and for PCL not
    even on the threshold: its denominator is every other embedding)."""
    from glcl_core.contrastive.global_masks import GLOBAL_REDUCTION, global_masks

    s = int(cfg.data.n_partitions)
    if strategy in ("GD-", "GD"):
        m = int(cfg.global_.n_volumes)
        volume, partition = np.repeat(np.arange(m), s), np.tile(np.arange(s), m)
    else:
        n = int(cfg.global_.batch_size)
        volume, partition = np.arange(n), np.arange(n) % s
    image = np.arange(len(volume))
    meta = {k: torch.as_tensor(np.tile(x, 2)) for k, x in
            (("image", image), ("volume", volume), ("partition", partition), ("position", (image + 1.0) / len(image)))}
    positives, negatives = global_masks(strategy, **meta, threshold=float(cfg.global_.threshold))
    return chance_loss(positives, negatives, GLOBAL_REDUCTION[strategy])


def threshold_table(metadata, thresholds: Sequence[float]) -> pd.DataFrame:
    """PCL's masks on one batch for several thresholds, compared with G^D's on the same batch.

    Columns (means per anchor unless stated): ``positives``; ``same volume`` and ``other volumes`` (where those
    positives come from; the other view counts as same volume); ``pairs`` (all positive pairs); ``GD negative``
    (positive pairs of different volumes that G^D puts in the denominator because a partition boundary lies
    between them: G^D's false negatives, as PCL sees it); ``GD only`` (G^D positives that PCL does not call
    positive: same partition but at least ``threshold`` apart).
    """
    from glcl_core.contrastive.global_masks import global_masks

    meta = metadata if isinstance(metadata, pd.DataFrame) else batch_table(metadata)
    t = {k: torch.as_tensor(meta[k].to_numpy().copy()) for k in ("image", "volume", "partition", "position")}
    gd_pos, gd_neg = (m.numpy() for m in global_masks("GD", **t))
    vol = meta["volume"].to_numpy()
    same_volume = vol[:, None] == vol[None, :]
    n = len(meta)
    rows = {}
    for threshold in thresholds:
        pos, _ = global_masks("PCL", **t, threshold=float(threshold))
        pos = pos.numpy()
        rows[float(threshold)] = {
            "positives": pos.sum() / n,
            "same volume": (pos & same_volume).sum() / n,
            "other volumes": (pos & ~same_volume).sum() / n,
            "pairs": int(pos.sum()),
            "GD negative": int((pos & gd_neg & ~same_volume).sum()),
            "GD only": int((gd_pos & ~pos).sum()),
        }
    table = pd.DataFrame(rows).T
    table.index.name = "threshold"
    return table.astype({"pairs": int, "GD negative": int, "GD only": int})
