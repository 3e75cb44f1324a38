"""glcl_core.analysis.local_maps (and .ablation) and glcl_core.viz.local: feature maps, similarity maps, mask
counts, the ablation runner (ci profile, a couple of iterations) and the figures."""
from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from glcl_core.analysis import local_maps as la  # noqa: E402
from glcl_core.models import LocalHead, UNet  # noqa: E402
from glcl_core.train import make_config  # noqa: E402


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    model = UNet(n_classes=4, channels=(4, 8, 8), img_size=16)
    return model, LocalHead(model.decoder_channels(1), out_dim=5)


# --------------------------------------------------------------------------------------------- similarity
def test_similarity_map_is_cosine_of_feature_vectors():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(6, 5, 7)).astype(np.float32)
    sim = la.similarity_map(f, 2, 3)
    assert sim.shape == (5, 7)
    ref = f[:, 2, 3]
    expected = np.einsum("chw,c->hw", f, ref) / (np.linalg.norm(f, axis=0) * np.linalg.norm(ref))
    np.testing.assert_allclose(sim, expected, atol=1e-5)
    assert sim[2, 3] == pytest.approx(1.0, abs=1e-6)
    assert sim.min() >= -1 - 1e-6 and sim.max() <= 1 + 1e-6


def test_similarity_map_upsamples_to_image_size_and_checks_pixel():
    f = torch.zeros(2, 4, 4)
    f[0, :, :2] = 1.0  # left half points along channel 0
    f[1, :, 2:] = 1.0  # right half along channel 1: orthogonal
    sim = la.similarity_map(f[None], 1, 0, size=16)
    assert sim.shape == (16, 16)
    assert sim[:, 0].min() > 0.99 and sim[:, -1].max() < 0.01  # far left like the pixel, far right orthogonal
    with pytest.raises(ValueError, match="outside"):
        la.similarity_map(f, 4, 0)
    with pytest.raises(ValueError):
        la.similarity_map(torch.zeros(2, 3, 4, 4), 0, 0)


def test_feature_maps_shapes_modes_and_batching(tiny_unet):
    model, head = tiny_unet
    model.train()
    images = np.random.default_rng(1).random((5, 16, 16)).astype(np.float32)
    f = la.feature_maps(model, head, images, n_blocks=1, batch_size=2)
    assert f.shape == (5, 5, 8, 8) and f.dtype == torch.float32
    assert model.training and head.training  # put back as found
    one = la.feature_maps(model, head, images[3], n_blocks=1)  # a single (H, W) slice
    torch.testing.assert_close(one[0], f[3], atol=1e-5, rtol=1e-5)  # eval mode: no batch dependence
    plain = la.feature_maps(model, None, images[:2], n_blocks=2)  # decoder output, no g2
    assert plain.shape == (2, 4, 16, 16)
    with pytest.raises(ValueError):
        la.feature_maps(model, head, np.zeros((2, 3, 16, 16), np.float32), n_blocks=1)


def test_random_local_model_loads_encoder_only(ci_config):
    donor, _ = la.random_local_model(ci_config, seed=1)
    model, head = la.random_local_model(ci_config, init=donor.state_dict(), n_blocks=2, seed=2)
    for (name, a), b in zip(donor.encoder.state_dict().items(), model.encoder.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert not torch.equal(donor.decoder[0].up_conv[0].weight, model.decoder[0].up_conv[0].weight)
    assert head.net[0].in_channels == model.decoder_channels(2)


def test_landmarks_lie_deep_inside_each_class():
    label = np.zeros((20, 20), int)
    label[2:18, 2:18] = 1
    label[8:12, 8:12] = 2
    points = la.landmarks(label, ["bg", "ring", "core"])
    assert list(points) == ["bg", "ring", "core"]
    for k, name in enumerate(points):
        assert label[points[name]] == k
    assert 8 <= points["core"][0] <= 11
    assert la.landmarks(label)["class 2"] == points["core"]


# ------------------------------------------------------------------------------------------------ counts
def test_similarity_summary_regions():
    f = torch.zeros(2, 12, 12)
    f[0] = 1.0  # everything along channel 0 ...
    f[1, 4:8, 4:8] = 1.0  # ... except a block at 45 degrees
    label = np.zeros((12, 12), int)
    label[4:8, 4:8] = 2  # the block is class 2; class 1 absent
    table = la.similarity_summary({"(a) one": f, "(b) two": -f}, 5, 5, label, ["bg", "c1", "block"], border=2)
    assert list(table.columns) == ["(a)", "(b)"]
    assert list(table.index) == ["minimum", "median, whole slice", "median, image border (2 px)",
                                 "median, bg inside the border", "median, block"]
    assert table.loc["median, block", "(a)"] == pytest.approx(1.0, abs=1e-5)
    assert table.loc["median, image border (2 px)", "(a)"] == pytest.approx(math.sqrt(0.5), abs=1e-5)
    assert table.loc["minimum", "(b)"] == pytest.approx(math.sqrt(0.5), abs=1e-5)  # -f: same cosines


def test_mask_counts_lr_ld_sparse_and_dense():
    meta = ([0, 1, 2, 3], [0, 0, 1, 1], [0, 1, 0, 1])
    lr = la.mask_counts("LR", *meta, n_regions=13, n_negatives=10)
    assert (lr["positives"] == 1).all() and (lr["negatives"] == 10).all()
    ld = la.mask_counts("LD", *meta, n_regions=13, n_negatives=10)
    assert (ld["positives"] == 3).all() and (ld["negatives"] == 10).all()  # + same region in the partner slice
    dense = la.mask_counts("LD", *meta, n_regions=16, n_negatives=None)
    assert (dense["negatives"] == 30).all()
    # a slice whose partition appears in no other volume gets no extra positives
    odd = la.mask_counts("LD", [0, 1, 2], [0, 1, 1], [0, 0, 2], n_regions=13, n_negatives=4)
    assert odd["positives"].tolist() == [3, 3, 1]


def test_negatives_and_chance_loss_match_the_kernel():
    assert la.negatives_per_anchor("sparse", None, 13) == 10
    assert la.negatives_per_anchor("dense", None, 16) == 30
    assert la.negatives_per_anchor("dense", 8, 16) == 8
    # identical features everywhere: every similarity equal, the loss is exactly log(1 + n)
    from glcl_core.contrastive.local_masks import local_loss

    f = torch.ones(2, 3, 12, 12)
    meta = (torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 0]))
    for form, n_neg, n_regions in (("sparse", 10, 13), ("sparse", 4, 13), ("dense", None, 16)):
        loss = local_loss(f, f.clone(), *meta, form=form, n_negatives=n_neg)
        expected = la.chance_loss(la.negatives_per_anchor(form, n_neg, n_regions))
        assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert la.chance_loss(10) == pytest.approx(math.log(11))


def test_setting_names():
    defaults = make_config("ci").local
    assert la.setting_name(None) == "no local stage"
    assert la.setting_name({}) == "default"
    assert la.setting_name({"decoder_blocks": 2}) == "l=2"
    assert la.setting_name({"form": "dense", "n_negatives": None}) == "dense, neg=all"
    assert la.setting_name({"region_size": 3, "strategy": "LD"}, defaults) == "LD"


# ---------------------------------------------------------------------------------------------- ablation
def test_local_ablation_table(ci_config, ci_split):
    from glcl_core.data.split import Split
    from glcl_core.data.volume import Volume

    cfg = make_config("ci", global_={"iterations": 2}, local={"iterations": 2},
                      finetune={"iterations": 2, "batch_size": 4})
    short = [Volume(f"short_{v.name}", v.image[8:16], v.label[8:16], v.spacing) for v in ci_split.val]
    split = Split(pool=ci_split.pool[:4], val=short, test=ci_split.test)  # small: the test stays fast
    ab = la.local_ablation(cfg, split, {"none": None, "l2 neg4": {"decoder_blocks": 2, "n_negatives": 4},
                                        "dense": {"form": "dense"}})
    t = ab.table
    assert t["setting"].tolist() == ["none", "l2 neg4", "dense"]
    assert set(ab.local) == {"l2 neg4", "dense"} and set(ab.finetuned) == set(t["setting"])
    row = t.set_index("setting")
    assert row.loc["l2 neg4", "decoder_blocks"] == 2 and row.loc["l2 neg4", "negatives"] == 4
    assert row.loc["l2 neg4", "chance"] == pytest.approx(math.log(5))
    h, w = ab.local["dense"].model.feature_shape(cfg.local.decoder_blocks)
    assert row.loc["dense", "negatives"] == 2 * ((h // 3) * (w // 3) - 1)
    assert np.isnan(row.loc["none", "loss_end"]) and np.isfinite(row.loc["dense", "loss_end"])
    assert t["val_dice"].between(0, 1).all() and (t["seconds"] > 0).all()
    assert {f"dice {k}" for k in (1, 2, 3)} <= set(t.columns)
    assert set(ab.dice["volume"]) == {v.name for v in short}  # validation only, never test
    assert not set(ab.dice["volume"]) & {v.name for v in ci_split.test}
    # the local stage really differs between settings (different decoders), the frozen encoder does not
    a, b = ab.local["l2 neg4"].model, ab.local["dense"].model
    torch.testing.assert_close(a.encoder.state_dict(), b.encoder.state_dict())
    # one seed (the default, cfg.seed): one run per setting, no spread
    assert (t["n_seeds"] == 1).all() and t["val_dice_sd"].isna().all()
    assert len(ab.runs) == 3 and (ab.runs["seed"] == cfg.seed).all()
    np.testing.assert_allclose(ab.runs["val_dice"], t["val_dice"])


def test_local_ablation_several_seeds(ci_split):
    from glcl_core.data.split import Split, draw_labelled
    from glcl_core.data.volume import Volume

    cfg = make_config("ci", global_={"iterations": 2}, local={"iterations": 2},
                      finetune={"iterations": 2, "batch_size": 4})
    short = [Volume(f"short_{v.name}", v.image[8:16], v.label[8:16], v.spacing) for v in ci_split.val]
    split = Split(pool=ci_split.pool[:4], val=short, test=ci_split.test)
    seeds = [0, 1]
    drawn = {s: draw_labelled(split.pool, 1, seed=s)[0].name for s in seeds}
    assert drawn[0] != drawn[1]  # the seeds below must draw different labelled volumes
    ab = la.local_ablation(cfg, split, {"none": None, "default": {}}, seeds=seeds)
    t, runs = ab.table, ab.runs
    assert t["setting"].tolist() == ["none", "default"] and (t["n_seeds"] == 2).all()
    assert len(runs) == 4 and set(zip(runs["setting"], runs["seed"])) == {(n, s) for n in t["setting"] for s in seeds}
    assert np.isfinite(t["val_dice_sd"]).all()
    # every seed fine-tunes on its own draw, and the runs differ
    assert dict(zip(runs.loc[runs["setting"] == "none", "seed"], runs.loc[runs["setting"] == "none", "labelled"])) \
        == drawn
    per_seed = runs.pivot(index="seed", columns="setting", values="val_dice")
    assert (per_seed.loc[0] != per_seed.loc[1]).all()
    # the table is the mean (and sd) of the per-seed rows
    dice_cols = [c for c in t.columns if c.startswith("dice ")] + ["val_dice", "loss_end"]
    means = runs.groupby("setting", sort=False)[dice_cols].mean().loc[t["setting"]]
    np.testing.assert_allclose(t[dice_cols].to_numpy(float), means.to_numpy(float))
    sds = runs.groupby("setting", sort=False)["val_dice"].std().loc[t["setting"]]
    np.testing.assert_allclose(t["val_dice_sd"], sds)
    assert set(ab.dice["seed"]) == set(seeds) and set(ab.local) == {"default"}
    # local[...] keeps the first seed's stage; the global stage is shared by all runs
    assert ab.local["default"].model is not None and ab.global_init is not None


def test_local_ablation_rejects_bad_settings(ci_split):
    cfg = make_config("ci")
    with pytest.raises(ValueError, match="unknown local field"):
        la.local_ablation(cfg, ci_split, [{"blocks": 2}], init=object())
    with pytest.raises(ValueError, match="both called"):
        la.local_ablation(cfg, ci_split, [{}, {}], init=object())


# ----------------------------------------------------------------------------------------------- figures
def test_figures_draw(ci_split, monkeypatch):
    import matplotlib.pyplot as plt
    import pandas as pd

    from glcl_core.viz import local as vl

    v = ci_split.pool[0]
    img = v.image[v.n_slices // 2]
    fig = vl.plot_region_layouts(img, (32, 32), 3)
    assert len(fig.axes[0].patches) == 13 and len(fig.axes[1].patches) == (32 // 3) ** 2
    views = (np.stack([img, img]), np.stack([img, img]))
    fig = vl.plot_local_masks(views, [0, 1], [0, 1], [2, 2], (32, 32), anchor=(0, 4), n_negatives=4)
    assert "1 pos, 4 neg" in fig.axes[0].get_ylabel() and "3 pos, 4 neg" in fig.axes[4].get_ylabel()
    maps = {"a": torch.randn(4, 8, 8), "b": torch.randn(4, 16, 16)}
    fig = vl.plot_similarity(img, maps, 10, 12, label=v.label[v.n_slices // 2])
    assert len(fig.axes) == 4  # slice, two maps, colour bar
    frames = []
    monkeypatch.setattr(vl, "show_in", lambda output, figure: frames.append(figure.axes[0].get_title()))
    box = vl.similarity_explorer(img, maps, label=v.label[v.n_slices // 2], class_names=["bg", "c", "g", "w"])
    chooser, y_slider, x_slider, _ = box.children[0].children
    assert len(frames) == 1  # the first frame is drawn at once
    chooser.value = chooser.options[1][1]  # jump to the background landmark: one new frame, at that pixel
    assert len(frames) == 2 and frames[-1] == f"slice, pixel ({y_slider.value}, {x_slider.value})"
    assert (y_slider.value, x_slider.value) == chooser.options[1][1]
    table = pd.DataFrame({"setting": ["no local stage", "default", "K=5"], "val_dice": [0.3, 0.4, 0.35],
                          "loss_start": [np.nan, 2.4, 2.4], "loss_end": [np.nan, 1.2, 1.0],
                          "chance": [np.nan, 2.4, 2.4]})
    fig = vl.plot_ablation(table)
    assert len(fig.axes[0].patches) == 3 and len(fig.axes[1].lines) == 3 * 2 + 1  # start-end per setting, chance
    assert not fig.axes[0].containers[1:] and [t.get_text() for t in fig.axes[0].texts] == [" 0.300", " 0.400",
                                                                                              " 0.350"]
    # several seeds: the bars are means with +-1 sd error bars and "mean ± sd" labels
    table["val_dice_sd"], table["n_seeds"] = [0.05, 0.1, np.nan], 3
    fig = vl.plot_ablation(table)
    bars = [c for c in fig.axes[0].containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(bars) == 1
    segments = bars[0].lines[2][0].get_segments()  # one horizontal segment per setting that has an sd
    assert sorted(round(float(abs(s[1][0] - s[0][0])), 6) for s in segments) == [0.1, 0.2]
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels == [" 0.300 ± 0.050", " 0.400 ± 0.100", " 0.350"]
    assert all(t.get_fontsize() == 9 for t in fig.axes[0].texts)
    assert "3 seeds" in fig.axes[0].get_xlabel()
    plt.close("all")


def test_middle_slices_batch(ci_split):
    vols = ci_split.pool[:2]
    batch = la.middle_slices(vols, partitions=(1, 3), n_partitions=4)
    hw = vols[0].image.shape[1:]
    assert batch.images.shape == (4, 1, *hw) and batch.labels.shape == (4, *hw)
    assert batch.volume.tolist() == [0, 0, 1, 1] and batch.partition.tolist() == [1, 3, 1, 3]
    for row, (i, s) in enumerate([(0, 1), (0, 3), (1, 1), (1, 3)]):
        k = int(round(float(batch.position[row]) * vols[i].n_slices)) - 1  # position = (k + 1) / Z
        assert vols[i].partitions(4)[k] == s
        np.testing.assert_array_equal(batch.images[row, 0].numpy(), vols[i].image[k])


def test_calibrated_reestimates_decoder_batch_norm_only(tiny_unet):
    model, _ = tiny_unet
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(6, 16, 16) * 3 + 1  # far from the initial statistics (mean 0, variance 1)
    tuned = la.calibrated(model, images, n_blocks=1, batch_size=6)
    for k, v in model.state_dict().items():  # the original is untouched
        torch.testing.assert_close(v, before[k], msg=k)
    after = tuned.state_dict()
    for k in after:
        same = torch.equal(after[k], before[k])
        statistic = k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        if k.startswith("encoder.") or k.startswith("decoder.1.") or not statistic:
            assert same, k  # weights, encoder statistics and later blocks unchanged
        else:
            assert not same, k
    # the first batch norm of block 1 now holds the mean of its conv output over the images
    block = tuned.decoder[0]
    with torch.no_grad():
        feats = tuned.encode(images[:, None])
        up = torch.nn.functional.interpolate(feats[-1], size=feats[-2].shape[-2:], mode="bilinear",
                                             align_corners=False)
        conv_out = block.up_conv[0](up)
    torch.testing.assert_close(block.up_conv[1].running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-4, rtol=1e-4)
    assert not tuned.training and block.up_conv[1].momentum == 0.1
