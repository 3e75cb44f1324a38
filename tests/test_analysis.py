"""Embedding analysis (kNN across volumes, similarity by gap, mask statistics) and the embedding figures."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from glcl_core import analysis as an
from glcl_core.data.volume import Volume
from glcl_core.contrastive.kernel import masked_info_nce
from glcl_core.models import GlobalHead, UNet
from glcl_core.contrastive.global_masks import GLOBAL_REDUCTION, global_masks


def toy_meta(n_volumes: int = 3, n_slices: int = 8, n_partitions: int = 4) -> pd.DataFrame:
    rows = []
    for v in range(n_volumes):
        vol = Volume(f"v{v}", np.zeros((n_slices, 4, 4), np.float32), None, (1.0, 1.0, 1.0))
        for k in range(n_slices):
            rows.append({"volume": vol.name, "volume_index": v, "slice": k,
                         "partition": int(vol.partitions(n_partitions)[k]), "position": float(vol.positions[k])})
    return pd.DataFrame(rows)


def position_embedding(meta: pd.DataFrame, volume_shift: float = 0.0) -> np.ndarray:
    """Points on a half circle by position (cosine similarity falls with the gap), plus an optional per-volume
    direction that makes same-volume slices alike."""
    angle = meta["position"].to_numpy() * math.pi / 2
    own = np.eye(meta["volume_index"].max() + 1)[meta["volume_index"]] * volume_shift
    return np.concatenate([np.stack([np.cos(angle), np.sin(angle)], 1), own], axis=1)


# ------------------------------------------------------------------------------------------------- kNN
def test_knn_perfect_when_embedding_is_position():
    meta = toy_meta()
    scores = an.knn_scores(position_embedding(meta), meta, k=1)
    # the nearest other-volume slice has the same position: same partition, zero error
    assert scores["partition_accuracy"] == 1.0
    assert scores["position_error"] == pytest.approx(0.0, abs=1e-9)


def test_knn_ignores_same_volume_neighbours():
    meta = toy_meta()
    emb = position_embedding(meta, volume_shift=100.0)  # every slice is closest to its own volume
    pred = an.knn_predict(emb, meta, k=3)
    # with its own volume excluded, the position signal still decides: results as without the shift
    assert pred["correct"].all()
    # a plain kNN would pick same-volume slices; check that none of the chosen positions is impossible:
    # other volumes have slices at every position, so the prediction is exact up to k-averaging
    assert pred["position_error"].max() < 0.2


def test_knn_detects_volume_only_embedding():
    meta = toy_meta(n_volumes=4)
    emb = np.eye(4)[meta["volume_index"]] + 1e-3 * np.random.default_rng(0).standard_normal((len(meta), 4))
    scores = an.knn_scores(emb, meta, k=5)
    chance = an.chance_scores(meta, k=5, repeats=20)
    assert abs(scores["partition_accuracy"] - chance["partition_accuracy"]) < 0.2
    assert scores["partition_accuracy"] < 0.6
    assert 0.15 < chance["position_error"] < 0.45


def test_knn_validates_inputs():
    meta = toy_meta()
    with pytest.raises(ValueError, match="metadata rows"):
        an.knn_scores(np.zeros((3, 2)), meta)
    with pytest.raises(ValueError, match="k must be"):
        an.knn_scores(position_embedding(meta), meta, k=100)
    with pytest.raises(ValueError, match="at least 2 volumes"):
        one = meta[meta["volume_index"] == 0]
        an.knn_scores(position_embedding(one), one)


def test_similarity_by_position_map():
    meta = toy_meta(n_volumes=3, n_slices=8)
    part = meta["partition"].to_numpy()
    emb = np.eye(4)[part]  # a perfect G^D-like embedding: 1 within a partition, 0 across
    m = an.similarity_by_position(emb, meta, bins=4)
    # positions (k+1)/8: bin a holds slices 2a and 2a+1, i.e. partition a; cross-volume pairs only
    assert np.allclose(m, np.eye(4))
    m8 = an.similarity_by_position(emb, meta, bins=8)
    assert np.allclose(m8, np.kron(np.eye(4), np.ones((2, 2))))
    assert np.allclose(m8, m8.T)
    # a slice paired only with its own volume would be excluded: one volume gives no pairs at all
    one = meta[meta["volume_index"] == 0]
    assert np.isnan(an.similarity_by_position(emb[: len(one)], one, bins=4)).all()


def test_embed_slices_centring_removes_shared_direction():
    vols = _volumes()
    model = UNet(channels=(4, 8, 8), img_size=32)
    head = GlobalHead.for_unet(model, hidden=16, out_dim=6)
    raw, _ = an.embed_slices(model, head, vols, centre=False)
    centred, _ = an.embed_slices(model, head, vols, centre=True)
    off = ~np.eye(len(raw), dtype=bool)
    assert (centred @ centred.T)[off].mean() < (raw @ raw.T)[off].mean()
    assert abs((centred @ centred.T)[off].mean()) < 0.1  # centred rows point every which way


# -------------------------------------------------------------------------------------------- embeddings
def _volumes(n: int = 3, z: int = 8, size: int = 32) -> list[Volume]:
    rng = np.random.default_rng(0)
    return [Volume(f"v{i}", rng.random((z + i, size, size), dtype=np.float32), None, (2.0, 1.0, 1.0))
            for i in range(n)]


def test_embed_slices_shapes_norms_and_modes():
    vols = _volumes()
    model = UNet(channels=(4, 8, 8), img_size=32)
    head = GlobalHead.for_unet(model, hidden=16, out_dim=6)
    model.train()
    emb, meta = an.embed_slices(model, head, vols, n_partitions=4, stride=2, batch_size=5)
    assert emb.shape == (sum(len(range(0, v.n_slices, 2)) for v in vols), 6)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert list(meta.columns) == an.META_COLUMNS
    assert meta["slice"].tolist()[:4] == [0, 2, 4, 6]
    assert model.training and head.training  # modes restored
    enc, _ = an.embed_slices(model, None, vols, features="encoder")
    assert enc.shape[1] == 8
    with pytest.raises(ValueError, match="needs the global head"):
        an.embed_slices(model, None, vols)
    # eval mode inside: the same slice gives the same embedding whatever else is in the batch
    a, _ = an.embed_slices(model, head, vols[:1], batch_size=1, centre=False)
    b, _ = an.embed_slices(model, head, vols[:1], batch_size=64, centre=False)
    assert np.allclose(a, b, atol=1e-5)


def test_pixel_embeddings_are_correlations():
    vols = _volumes(n=2, z=4)
    emb, meta = an.pixel_embeddings(vols, downsample=1)
    x = np.concatenate([v.image for v in vols]).reshape(len(meta), -1)
    assert np.allclose(emb @ emb.T, np.corrcoef(x), atol=1e-5)


def test_umap_is_deterministic():
    emb = np.random.default_rng(1).standard_normal((40, 8)).astype(np.float32)
    a, b = an.umap_2d(emb, seed=3, n_neighbors=5), an.umap_2d(emb, seed=3, n_neighbors=5)
    assert a.shape == (40, 2) and np.allclose(a, b)


# ----------------------------------------------------------------------------------------------- masks
IMAGE = torch.arange(12).repeat(2)  # 3 volumes x 4 partitions, 2 views
VOLUME = torch.arange(3).repeat_interleave(4).repeat(2)
PARTITION = torch.arange(4).repeat(3).repeat(2)
POSITION = (PARTITION.double() + 0.5) / 4


def test_mask_summary_counts():
    masks = {s: global_masks(s, IMAGE, VOLUME, PARTITION, POSITION, threshold=0.1) for s in ("GR", "GD-", "GD", "PCL")}
    summary = an.mask_summary(masks)
    assert summary.loc["GR", ["positives", "negatives", "ignored"]].tolist() == [1, 22, 0]
    assert summary.loc["GD-", ["positives", "negatives", "ignored"]].tolist() == [1, 18, 4]
    assert summary.loc["GD", ["positives", "negatives", "ignored"]].tolist() == [5, 18, 0]
    assert summary.loc["PCL", ["positives", "negatives", "ignored"]].tolist() == [5, 18, 0]
    assert summary.loc["GD", "pairs"] == 24 * 5


@pytest.mark.parametrize("strategy", ["GR", "GD-", "GD", "PCL"])
def test_chance_loss_equals_kernel_at_equal_similarities(strategy):
    pos, neg = global_masks(strategy, IMAGE, VOLUME, PARTITION, POSITION, threshold=0.3)
    z = torch.ones(len(IMAGE), 4, dtype=torch.float64)  # every similarity equal
    expected = masked_info_nce(z, pos, neg, 0.1, GLOBAL_REDUCTION[strategy]).item()
    assert an.chance_loss(pos, neg) == pytest.approx(expected, rel=1e-9)


def test_batch_table_views():
    batch = {"image": IMAGE, "volume": VOLUME, "partition": PARTITION, "position": POSITION}
    table = an.batch_table(batch)
    assert table["view"].tolist() == [0] * 12 + [1] * 12
    assert list(table.columns) == ["image", "view", "volume", "partition", "position"]


# ---------------------------------------------------------------------------------------------- figures
def test_figures_build():
    from glcl_core.viz import embeddings as ve

    batch = {"image": IMAGE, "volume": VOLUME, "partition": PARTITION, "position": POSITION}
    masks = {s: global_masks(s, IMAGE, VOLUME, PARTITION, POSITION) for s in ("GR", "GD-", "GD")}
    fig = ve.plot_masks(masks, batch)
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    order = ve.mask_order(an.batch_table(batch), "partition")
    assert an.batch_table(batch)["partition"].to_numpy()[order].tolist() == sorted(PARTITION.tolist())
    assert isinstance(ve.plot_threshold_masks(batch, 0.3), Figure)
    meta = toy_meta()
    emb = position_embedding(meta)
    xy = {"a": emb[:, :2], "b": emb[:, :2]}
    fig = ve.plot_umap(xy, meta, colour_by=("partition", "volume", "position"))
    assert len([a for a in fig.axes if a.get_label() != "<colorbar>"]) >= 6
    hist = pd.DataFrame({"step": [1, 2, 3], "loss": [3.0, 2.5, 2.0]})
    assert isinstance(ve.plot_loss_curves({"GD": hist}, chance={"GD": 3.2}), Figure)
    maps = {"GD": an.similarity_by_position(emb, meta, bins=8)}
    assert isinstance(ve.plot_position_similarity(maps, n_partitions=4, threshold=0.1), Figure)
    box = ve.threshold_explorer(batch, threshold=0.2)
    assert box.children[0].value == pytest.approx(0.2)


def test_knn_table_layout():
    meta = toy_meta()
    good, bad = position_embedding(meta), np.random.default_rng(0).standard_normal((len(meta), 3))
    table = an.knn_table({"encoder": {"good": good, "bad": bad}, "projection": {"good": good}}, meta, k=1)
    assert list(table.index) == ["good", "bad", "chance"]
    assert table.loc["good", ("encoder", "partition_accuracy")] == 1.0
    assert np.isnan(table.loc["bad", ("projection", "partition_accuracy")])
    assert table.loc["chance", ("encoder", "position_error")] == table.loc["chance", ("projection", "position_error")]
