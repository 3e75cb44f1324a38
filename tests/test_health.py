"""Training-health diagnostics: chance level, retrieval, effective rank, the collapse warning."""
from __future__ import annotations

import math

import pytest
import torch

from glcl_core.contrastive.global_masks import global_masks
from glcl_core.contrastive.health import (
    chance_level,
    collapse_reason,
    effective_rank,
    embedding_std,
    retrieval_top1,
)
from glcl_core.contrastive.kernel import masked_info_nce
from glcl_core.contrastive.local_masks import local_masks


def _gd_meta(m: int = 3, s: int = 4):
    image = torch.arange(m * s).repeat(2)
    volume = torch.arange(m).repeat_interleave(s).repeat(2)
    partition = torch.arange(s).repeat(m).repeat(2)
    return image, volume, partition


@pytest.mark.parametrize("strategy,reduction", [("GR", "pairs"), ("GD-", "pairs"), ("GD", "pairs")])
def test_chance_level_is_the_loss_of_identical_embeddings(strategy, reduction):
    image, volume, partition = _gd_meta()
    pos, neg = global_masks(strategy, image, volume, partition, None)
    z = torch.randn(1, 16).expand(len(image), 16)  # one embedding, repeated
    want = float(masked_info_nce(z.double(), pos, neg, 0.1, reduction))
    assert chance_level(pos, neg, reduction) == pytest.approx(want, rel=1e-12)
    # the closed form: log(1 + negatives of the anchor other than the positive), averaged over pairs
    terms = []
    for i in range(len(image)):
        for p in torch.nonzero(pos[i]).flatten().tolist():
            n_neg = int(neg[i].sum()) - int(neg[i, p])
            terms.append(math.log(1 + n_neg))
    assert chance_level(pos, neg, reduction) == pytest.approx(sum(terms) / len(terms), rel=1e-12)
    if strategy == "GD":
        return
    # a batch whose views of a slice are alike and whose slices are apart beats chance
    base = torch.randn(len(image) // 2, 16)
    good = torch.cat([base, base + 0.01 * torch.randn_like(base)])
    assert float(masked_info_nce(good, pos, neg, 0.1, reduction)) < chance_level(pos, neg, reduction)


def test_chance_level_with_block_masks():
    pos, neg = local_masks("LR", torch.arange(3), torch.arange(3), torch.zeros(3, dtype=torch.long), 5)
    z = torch.ones(3, 10, 4)
    assert chance_level(pos, neg) == pytest.approx(float(masked_info_nce(z.double(), pos, neg, 0.1)), rel=1e-12)


def test_retrieval_top1():
    image = torch.arange(4).repeat(2)
    pos, _ = global_masks("GR", image, None, None, None)
    base = torch.eye(4, 8)
    z = torch.cat([base, base + 0.05])
    assert retrieval_top1(z, pos) == 1.0
    swapped = torch.cat([base, base[[1, 0, 3, 2]] + 0.05])  # second views of 0/1 and 2/3 exchanged
    assert retrieval_top1(swapped, pos) == 0.0
    assert math.isnan(retrieval_top1(z, torch.zeros(8, 8, dtype=torch.bool)))


def test_effective_rank_and_std():
    assert effective_rank(torch.ones(10, 6)) == pytest.approx(1.0, abs=1e-6)
    assert embedding_std(torch.ones(10, 6)) == pytest.approx(0.0, abs=1e-12)
    spread = torch.eye(6).repeat(2, 1)  # centred: six points of a simplex span 5 equal directions
    assert effective_rank(spread) == pytest.approx(5.0, rel=1e-6)
    line = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(5, 1)  # two directions: one line after centring
    assert effective_rank(line) == pytest.approx(1.0, rel=1e-6)
    assert embedding_std(spread) > 0.3


def test_collapse_reason():
    assert collapse_reason(1.5, 0, 30) is not None
    assert collapse_reason(10.0, 3, 30) is not None  # 10 % of the logged steps at chance
    assert collapse_reason(10.0, 2, 30) is None
    assert collapse_reason(float("nan"), 0, 30) is None


def test_collapse_warning_on_a_constant_encoder(monkeypatch, capsys):
    from glcl_core.experiment import prepare_split
    from glcl_core.train import pretrain, pretrain_step
    from glcl_core.train.config import make_config

    def constant(self, x):  # every image gets the same embedding (trainable, so the step still runs)
        return self.head.mlp[-1].bias.expand(x.shape[0], -1) * 1.0

    monkeypatch.setattr(pretrain_step._GlobalEmbedder, "forward", constant)
    cfg = make_config("ci", global_={"strategy": "GR", "iterations": 3, "log_every": 1})
    split = prepare_split(cfg)
    result = pretrain.pretrain_global(cfg, split.pool, val=split.val, progress=False)
    err = capsys.readouterr().err
    assert "warning: global GR looks collapsed at step 1: effective rank 1.00 < 2" in err, err
    assert err.count("looks collapsed") == 1  # one line, not one per step
    h = result.history
    for column in ("loss_over_chance", "retrieval_top1", "effective_rank", "embedding_std"):
        assert column in h.columns
    assert (h["loss_over_chance"] - 1).abs().max() < 1e-5  # identical embeddings sit exactly at chance
    assert h["effective_rank"].max() < 1.01


def test_global_stage_history_has_health_columns(capsys):
    from glcl_core.experiment import prepare_split
    from glcl_core.train import pretrain
    from glcl_core.train.config import make_config

    cfg = make_config("ci", global_={"strategy": "GD", "iterations": 2, "log_every": 1})
    split = prepare_split(cfg)
    result = pretrain.pretrain_global(cfg, split.pool, val=split.val, progress="lines")
    out = capsys.readouterr().out
    assert "global GD step 2/2" in out and "retrieval_top1" in out
    h = result.history
    assert h["effective_rank"].min() > 2  # a random encoder is not collapsed
    assert ((h["retrieval_top1"] >= 0) & (h["retrieval_top1"] <= 1)).all()
    assert (h["loss_over_chance"] > 0.5).all() and (h["loss_over_chance"] < 1.5).all()


@pytest.mark.parametrize("strategy", ["LR", "LD"])
def test_local_stage_history_has_health_columns(strategy):
    from glcl_core.experiment import prepare_split
    from glcl_core.train import pretrain
    from glcl_core.train.config import make_config

    cfg = make_config("ci", global_={"iterations": 1}, local={"strategy": strategy, "iterations": 2, "log_every": 1})
    split = prepare_split(cfg)
    g = pretrain.pretrain_global(cfg, split.pool, val=split.val, progress=False)
    result = pretrain.pretrain_local(cfg, split.pool, init=g, val=split.val, progress=False)
    h = result.history
    for column in ("loss_over_chance", "val_loss_over_chance", "retrieval_top1", "effective_rank"):
        assert column in h.columns
    assert ((h["retrieval_top1"] >= 0) & (h["retrieval_top1"] <= 1)).all()
    assert (h["loss_over_chance"] > 0).all() and (h["loss_over_chance"] < 2).all()


def test_plot_health_draws_one_line_per_run_and_panel():
    import pandas as pd

    from glcl_core.viz.embeddings import plot_health

    h = pd.DataFrame({"step": [10, 20], "loss_over_chance": [0.9, 0.5], "val_loss_over_chance": [0.95, 0.6],
                      "retrieval_top1": [0.2, 0.8], "effective_rank": [5.0, 9.0]})
    fig = plot_health({"GR": h, "GD": h.assign(retrieval_top1=[0.1, 0.3])})
    axes = fig.axes
    assert len(axes) == 3
    assert [len(ax.lines) for ax in axes] == [2 * 2 + 1, 2 + 0, 2 + 1]  # + val dotted lines, + reference lines
    assert list(axes[1].lines[1].get_ydata()) == [0.1, 0.3]
    with pytest.raises(ValueError):
        plot_health({})
