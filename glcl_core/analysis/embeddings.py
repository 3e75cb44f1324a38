"""Slice embeddings of a pre-trained encoder and whether they group the same place of different volumes:
the embeddings, leave-one-volume-out kNN scores, mean similarity by position and a 2-D UMAP layout.

The global strategies differ only in which slices they call alike. After pre-training, the question is whether the
embedding space reflects that choice *across volumes*: do slices of the same partition (G^D) or of nearby
positions (PCL) of *different* scans land close together? This module measures it cheaply:

* :func:`embed_slices` runs an encoder (and optionally its head g1) over the slices of some volumes and returns
  L2-normalised embeddings with a metadata table; :func:`pixel_embeddings` does the same for raw pixels (a
  network-free baseline);
* :func:`knn_predict` / :func:`knn_scores` predict each slice's partition (majority vote) and position (mean) from
  its ``k`` nearest neighbours **in other volumes** (leave one volume out), so a score above chance means that the
  embedding groups the same place of different scans, not just neighbouring slices of one scan;
  :func:`chance_scores` gives the same scores for random embeddings;
* :func:`similarity_by_position` averages cross-volume cosine similarity by the positions of the two slices (a
  map on which G^D's partition blocks or PCL's smooth band can be seen);
* :func:`umap_2d` is a deterministic UMAP wrapper for plots.

What a batch's contrastive masks contain is in :mod:`glcl_core.analysis.batch_masks`. Figures are in
:mod:`glcl_core.viz.embeddings`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from glcl_core.data.volume import Volume

FEATURES = ("projection", "encoder")
META_COLUMNS = ["volume", "volume_index", "slice", "partition", "position"]

__all__ = [
    "FEATURES",
    "embed_slices",
    "pixel_embeddings",
    "knn_predict",
    "knn_scores",
    "knn_table",
    "chance_scores",
    "similarity_by_position",
    "umap_2d",
]


# ------------------------------------------------------------------------------------------------ embeddings
def _metadata(volumes: Sequence[Volume], n_partitions: int, stride: int) -> tuple[pd.DataFrame, list[np.ndarray]]:
    if not volumes:
        raise ValueError("no volumes to embed")
    stride = int(stride)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    rows, picks = [], []
    for i, v in enumerate(volumes):
        k = np.arange(0, v.n_slices, stride)
        picks.append(k)
        rows.append(pd.DataFrame({
            "volume": v.name, "volume_index": i, "slice": k,
            "partition": v.partitions(n_partitions)[k], "position": v.positions[k].astype(np.float64),
        }))
    return pd.concat(rows, ignore_index=True)[META_COLUMNS], picks


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 1e-12)


@torch.no_grad()
def embed_slices(
    model: torch.nn.Module,
    head: torch.nn.Module | None,
    volumes: Sequence[Volume],
    n_partitions: int = 4,
    device: torch.device | str | None = None,
    features: str = "projection",
    stride: int = 1,
    batch_size: int = 64,
    centre: bool = True,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Embed every ``stride``-th slice of each volume.

    Args:
        model: a :class:`~glcl_core.models.UNet` (its encoder is used, in eval mode: batch-norm running statistics).
        head: the global head g1; needed for ``features="projection"``.
        volumes: volumes with a common in-plane size (the model's ``img_size`` for a dense head).
        n_partitions: S, for the ``partition`` column.
        device: where to run (default: the model's device).
        features: ``"projection"``: g1's output (what the contrastive loss saw); ``"encoder"``: the bottleneck
            feature map averaged over space (what fine-tuning inherits).
        stride: take slices ``0, stride, 2*stride, ...`` of each volume.
        batch_size: slices per forward pass.
        centre: subtract the mean embedding of the slices given before normalising. A network's outputs for all
            slices often lie in a narrow cone (cosine similarity near 1 for any two slices, typical of a random or
            briefly trained network), which hides their differences from cosine similarity; centring removes the
            shared direction. It depends on the set of slices embedded, so compare encoders on the same set.

    Returns:
        ``embeddings (N, D)`` float32, L2-normalised rows, and a table with one row per slice: ``volume`` (name),
        ``volume_index``, ``slice`` (index k), ``partition``, ``position`` ((k + 1) / Z).
    """
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    if features == "projection" and head is None:
        raise ValueError("features='projection' needs the global head g1 (head=None given)")
    meta, picks = _metadata(volumes, n_partitions, stride)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    modules = [m for m in (model, head) if m is not None]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        stack = np.concatenate([np.asarray(v.image[k], dtype=np.float32) for v, k in zip(volumes, picks)])
        out = []
        for start in range(0, len(stack), int(batch_size)):
            x = torch.from_numpy(stack[start:start + int(batch_size)])[:, None].to(device)
            bottleneck = model.encode(x)[-1].float()
            z = head(bottleneck) if features == "projection" else bottleneck.mean(dim=(2, 3))
            out.append(z.float().cpu().numpy())
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    emb = np.concatenate(out).astype(np.float64)
    if centre:
        emb = emb - emb.mean(axis=0, keepdims=True)
    return _normalise(emb).astype(np.float32), meta


def pixel_embeddings(
    volumes: Sequence[Volume], n_partitions: int = 4, stride: int = 1, downsample: int = 2
) -> tuple[np.ndarray, pd.DataFrame]:
    """Raw pixels as embeddings (no network): block-mean downsampled, mean-centred, L2-normalised, so that the
    cosine similarity of two rows is the Pearson correlation of the slices. Same outputs as :func:`embed_slices`."""
    meta, picks = _metadata(volumes, n_partitions, stride)
    f = max(1, int(downsample))
    rows = []
    for v, k in zip(volumes, picks):
        x = np.asarray(v.image[k], dtype=np.float64)
        n, h, w = x.shape
        x = x[:, : h // f * f, : w // f * f].reshape(n, h // f, f, w // f, f).mean(axis=(2, 4)).reshape(n, -1)
        rows.append(x - x.mean(axis=1, keepdims=True))
    return _normalise(np.concatenate(rows)).astype(np.float32), meta


# ---------------------------------------------------------------------------------------------------- kNN
def _check_pair(emb: np.ndarray, meta: pd.DataFrame) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {emb.shape}")
    if len(meta) != len(emb):
        raise ValueError(f"{len(emb)} embeddings but {len(meta)} metadata rows")
    return emb


def knn_predict(
    emb: np.ndarray, meta: pd.DataFrame, k: int = 5, group: str = "volume_index", target: str = "partition",
    position: str = "position",
) -> pd.DataFrame:
    """Predict each slice's partition and position from its ``k`` most similar slices of **other** groups.

    Similarity is the cosine similarity of the rows of ``emb``. The partition is the majority vote of the
    neighbours (ties go to the class with the larger summed similarity); the position is their mean position.

    Returns:
        ``meta`` plus ``pred_partition``, ``correct``, ``pred_position``, ``position_error`` (``|p - p_hat|``).
    """
    emb = _normalise(_check_pair(emb, meta))
    groups = meta[group].to_numpy()
    if len(np.unique(groups)) < 2:
        raise ValueError("leave-one-volume-out kNN needs slices from at least 2 volumes")
    n_other = (groups[:, None] != groups[None, :]).sum(axis=1).min()
    k = int(k)
    if not 1 <= k <= n_other:
        raise ValueError(f"k must be in 1..{n_other} (slices outside the smallest group's volume), got {k}")
    sim = emb @ emb.T
    sim[groups[:, None] == groups[None, :]] = -np.inf  # neighbours only from other volumes (and never itself)
    nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # (N, k), unordered
    near_sim = np.take_along_axis(sim, nearest, axis=1)

    labels = meta[target].to_numpy()
    classes, coded = np.unique(labels, return_inverse=True)
    votes = np.zeros((len(emb), len(classes)))
    rows = np.repeat(np.arange(len(emb)), k)
    np.add.at(votes, (rows, coded[nearest].ravel()), 1.0)
    weight = np.zeros_like(votes)
    np.add.at(weight, (rows, coded[nearest].ravel()), near_sim.ravel())
    score = votes + 1e-6 * (weight - weight.min())  # similarity only breaks ties (0 <= bonus << 1)
    pred = classes[score.argmax(axis=1)]

    pos = meta[position].to_numpy(dtype=np.float64)
    pred_pos = pos[nearest].mean(axis=1)
    out = meta.copy()
    out["pred_partition"] = pred
    out["correct"] = pred == labels
    out["pred_position"] = pred_pos
    out["position_error"] = np.abs(pos - pred_pos)
    return out


def knn_scores(emb: np.ndarray, meta: pd.DataFrame, k: int = 5, group: str = "volume_index") -> pd.Series:
    """Leave-one-volume-out kNN summary: ``partition_accuracy`` (fraction of slices whose partition is the
    neighbours' majority) and ``position_error`` (mean ``|p - p_hat|``)."""
    pred = knn_predict(emb, meta, k=k, group=group)
    return pd.Series({"partition_accuracy": float(pred["correct"].mean()),
                      "position_error": float(pred["position_error"].mean())})


def chance_scores(meta: pd.DataFrame, k: int = 5, repeats: int = 10, seed: int = 0, dim: int = 32,
                  group: str = "volume_index") -> pd.Series:
    """:func:`knn_scores` of random Gaussian embeddings, averaged over ``repeats`` draws (what no structure gives)."""
    rng = np.random.default_rng(seed)
    runs = [knn_scores(rng.standard_normal((len(meta), dim)), meta, k=k, group=group) for _ in range(int(repeats))]
    return pd.concat(runs, axis=1).mean(axis=1)


def knn_table(spaces: Mapping[str, Mapping[str, np.ndarray]], meta: pd.DataFrame, k: int = 5,
              chance: bool = True) -> pd.DataFrame:
    """:func:`knn_scores` of several encoders in several embedding spaces, as one table.

    Args:
        spaces: ``space name -> (encoder name -> embeddings)``, e.g. ``{"encoder": {...}, "projection": {...}}``;
            all embeddings describe the slices of ``meta``, in the same order.
        chance: add a ``chance`` row (:func:`chance_scores`, the same in every space).

    Returns:
        Rows: encoders (in order of first appearance); columns: ``(space, partition_accuracy | position_error)``.
    """
    columns = {}
    for space, embeddings in spaces.items():
        table = pd.DataFrame({name: knn_scores(e, meta, k=k) for name, e in embeddings.items()}).T
        if chance:
            table.loc["chance"] = chance_scores(meta, k=k)
        columns[space] = table
    out = pd.concat(columns, axis=1)
    names = list(dict.fromkeys(n for e in spaces.values() for n in e)) + (["chance"] if chance else [])
    return out.loc[names]


def similarity_by_position(emb: np.ndarray, meta: pd.DataFrame, bins: int = 20,
                           group: str = "volume_index") -> np.ndarray:
    """Mean cosine similarity of slice pairs **from different volumes**, by the positions of the two slices.

    Entry ``[a, b]`` averages the pairs whose first slice has its position in bin ``a`` and second in bin ``b``
    (``bins`` equal bins of (0, 1]); the matrix is symmetric, NaN where no pair falls. Reading it needs no
    assumption about how similarity should change with height: an embedding that follows anatomy gives a smooth
    band along the diagonal; one trained with partitions (G^D) may show square blocks whose edges sit at the
    partition boundaries ``s / S``.
    """
    emb = _normalise(_check_pair(emb, meta))
    bins = int(bins)
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    sim = emb @ emb.T
    g = meta[group].to_numpy()
    pos = meta["position"].to_numpy(dtype=np.float64)
    cell = np.clip(np.ceil(pos * bins - 1e-9).astype(int) - 1, 0, bins - 1)  # p in (a / bins, (a + 1) / bins]
    cross = g[:, None] != g[None, :]
    total = np.zeros((bins, bins))
    count = np.zeros((bins, bins))
    rows, cols = np.nonzero(cross)
    np.add.at(total, (cell[rows], cell[cols]), sim[rows, cols])
    np.add.at(count, (cell[rows], cell[cols]), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# ---------------------------------------------------------------------------------------------------- UMAP
def umap_2d(emb: np.ndarray, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
            metric: str = "cosine") -> np.ndarray:
    """A 2-D UMAP layout ``(N, 2)`` of the embeddings, deterministic for a given ``seed`` (single-threaded).

    The first call in a fresh environment compiles numba code (tens of seconds; cached afterwards).
    """
    import warnings

    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or len(emb) < 4:
        raise ValueError(f"UMAP needs (N, D) embeddings with N >= 4, got shape {emb.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap warns that random_state disables parallelism, and about tbb
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=int(min(n_neighbors, len(emb) - 1)), min_dist=min_dist,
                            metric=metric, random_state=int(seed), init="spectral")
        return reducer.fit_transform(emb).astype(np.float32)
