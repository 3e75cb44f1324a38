"""Every stage in the ci profile on the embedded data; resume equality; configs; Dice."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from glcl_core.train import checkpoint as ckpt_mod
from glcl_core.train import loops
from glcl_core.train.config import RunConfig, make_config


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_profiles_scale_up():
    ci, cpu, gpu = (make_config(p) for p in ("ci", "cpu", "gpu"))
    assert ci.data.size < cpu.data.size < gpu.data.size == 192
    assert ci.global_.iterations < cpu.global_.iterations < gpu.global_.iterations == 10000
    assert len(gpu.model.channels) == 6 and gpu.model.channels == (16, 32, 64, 128, 128, 128)


def test_config_round_trip(tmp_path):
    cfg = make_config("ci", seed=3, global_={"strategy": "PCL"}, data={"path": "/x"})
    cfg.to_json(tmp_path / "c.json")
    back = RunConfig.from_json(tmp_path / "c.json")
    assert back == cfg and back.model.channels == cfg.model.channels


def test_config_digest_follows_results_settings_only():
    base = make_config("cpu")
    assert base.digest() == make_config("cpu").digest() == RunConfig.from_dict(base.to_dict()).digest()
    assert len(base.digest()) == 8
    assert make_config("cpu", finetune={"iterations": 100}).digest() != base.digest()
    assert make_config("cpu", global_={"lr": 3e-4}).digest() != base.digest()
    assert make_config("ci").digest() != base.digest()
    # speed settings change how fast, not what is computed
    assert make_config("cpu", speed={"channels_last": True}).digest() == base.digest()


def test_config_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown field global_.strategyy"):
        make_config("ci", global_={"strategyy": "GD"})
    with pytest.raises(ValueError, match="unknown profile"):
        make_config("tpu")


@pytest.mark.parametrize("strategy", ["GR", "GD-", "GD", "PCL"])
def test_pretrain_global_each_strategy(ci_config, ci_split, strategy, tmp_path):
    cfg = make_config("ci", global_={"strategy": strategy})
    res = loops.pretrain_global(cfg, ci_split.pool, out=tmp_path / "run", progress=False)
    assert len(res.history) == cfg.global_.iterations
    assert np.isfinite(res.history["loss"]).all() and (res.history["loss"] > 0).all()
    assert {"config.json", "history.csv", "last.pt", "final.pt"} <= {p.name for p in (tmp_path / "run").iterdir()}
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["global_"]["strategy"] == strategy


@pytest.mark.parametrize("strategy", ["LR", "LD"])
def test_pretrain_local_freezes_encoder(ci_split, strategy):
    cfg = make_config("ci", local={"strategy": strategy})
    g = loops.pretrain_global(cfg, ci_split.pool, progress=False)
    before = g.weights()
    loc = loops.pretrain_local(cfg, ci_split.pool, init=g, progress=False)
    after = loc.weights()
    enc = [k for k in after if k.startswith("encoder.")]
    dec = [k for k in after if k.startswith(f"decoder.0.") and k.endswith("weight")]
    assert enc and dec
    assert all(torch.equal(before[k], after[k]) for k in enc), "encoder (incl. BN statistics) must stay frozen"
    assert any(not torch.equal(before[k], after[k]) for k in dec), "trained decoder blocks must change"
    untouched = [k for k in after if k.startswith(f"decoder.{cfg.local.decoder_blocks}.")]
    assert all(torch.equal(before[k], after[k]) for k in untouched), "blocks after l are not trained"
    assert np.isfinite(loc.history["loss"]).all()


def test_finetune_and_evaluate(ci_split):
    cfg = make_config("ci")
    res = loops.finetune(cfg, ci_split.pool[:1], ci_split.val, progress=False)
    assert res.extra["best_step"] in (3, 6) and 0.0 <= res.extra["best_val_dice"] <= 1.0
    assert "val_dice" in res.history.columns
    scores = loops.evaluate(res.model, ci_split.test, n_classes=cfg.model.n_classes)
    assert len(scores) == len(ci_split.test) * (cfg.model.n_classes - 1)
    assert scores["dice"].between(0, 1).all()


def test_finetune_loads_pretrained_parts(ci_split):
    cfg = make_config("ci")
    g = loops.pretrain_global(cfg, ci_split.pool, progress=False)
    res = loops.finetune(cfg, ci_split.pool[:1], [], init=g, progress=False)
    assert res.extra["loaded"] == ["encoder"]
    loc = loops.pretrain_local(cfg, ci_split.pool, init=g, progress=False)
    res = loops.finetune(cfg, ci_split.pool[:1], [], init=loc, progress=False)
    assert res.extra["loaded"] == ["encoder", "decoder"]


def test_finetune_requires_labels(ci_split):
    cfg = make_config("ci")
    vol = ci_split.pool[0]
    unlabelled = type(vol)(name="u", image=vol.image, label=None, spacing=vol.spacing)
    with pytest.raises(ValueError, match="need labels"):
        loops.finetune(cfg, [unlabelled], [], progress=False)


def test_dice_per_class_known_values():
    target = np.zeros((1, 4, 4), dtype=np.int64)
    target[0, :2] = 1  # 8 voxels of class 1
    pred = np.zeros_like(target)
    pred[0, :1] = 1  # 4 voxels, all inside
    d = loops.dice_per_class(pred, target, 3)
    assert d[1] == pytest.approx(2 * 4 / 12)
    assert d[0] == pytest.approx(2 * 8 / (12 + 8))
    assert np.isnan(d[2])  # absent from both: undefined, not 1


def test_segmentation_loss_prefers_correct_logits():
    labels = torch.randint(0, 4, (2, 8, 8))
    good = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 10
    bad = torch.roll(good, 1, dims=1)
    for kind in ("dice", "dice+ce"):
        assert loops.segmentation_loss(good, labels, kind) < 0.05 < loops.segmentation_loss(bad, labels, kind)
    with pytest.raises(ValueError):
        loops.segmentation_loss(good, labels, "focal")


def test_run_folder_never_overwritten(ci_split, tmp_path):
    cfg = make_config("ci", global_={"iterations": 1})
    loops.pretrain_global(cfg, ci_split.pool, out=tmp_path / "r", progress=False)
    marker = (tmp_path / "r" / "final.pt").read_bytes()
    with pytest.raises(ckpt_mod.RunExistsError):
        loops.pretrain_global(cfg, ci_split.pool, out=tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "final.pt").read_bytes() == marker
    other = make_config("ci", global_={"iterations": 1, "lr": 0.5})
    with pytest.raises(ValueError, match="differs"):
        loops.pretrain_global(other, ci_split.pool, out=tmp_path / "r", resume=True, progress=False)
    loops.pretrain_global(cfg, ci_split.pool, out=tmp_path / "r", overwrite=True, progress=False)


def test_resume_after_crash_gives_identical_weights(ci_split, tmp_path, monkeypatch):
    """Interrupt global pre-training mid-run, resume, and end with exactly the uninterrupted weights."""
    cfg = make_config("ci", global_={"strategy": "GD", "iterations": 6, "checkpoint_every": 2})
    full = loops.pretrain_global(cfg, ci_split.pool, out=tmp_path / "full", progress=False)

    real_loss = loops.global_loss
    calls = {"n": 0}

    def crashing_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # after the step-2 checkpoint, before the step-4 one
            raise KeyboardInterrupt("session dropped")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(loops, "global_loss", crashing_loss)
    with pytest.raises(KeyboardInterrupt):
        loops.pretrain_global(cfg, ci_split.pool, out=tmp_path / "cut", progress=False)
    monkeypatch.setattr(loops, "global_loss", real_loss)
    assert ckpt_mod.load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 2
    resumed = loops.pretrain_global(cfg, ci_split.pool, out=tmp_path / "cut", resume=True, progress=False)
    assert _same_weights(full.weights(), resumed.weights())
    assert _same_weights(full.head.state_dict(), resumed.head.state_dict())
    assert list(resumed.history["loss"]) == list(full.history["loss"])


def test_resume_finetune_keeps_best_model(ci_split, tmp_path):
    cfg = make_config("ci")
    full = loops.finetune(cfg, ci_split.pool[:1], ci_split.val, out=tmp_path / "a", progress=False)
    half = make_config("ci", finetune={"iterations": 3})
    loops.finetune(half, ci_split.pool[:1], ci_split.val, out=tmp_path / "b", progress=False)
    resumed = loops.finetune(cfg, ci_split.pool[:1], ci_split.val, out=tmp_path / "b", resume=True, progress=False)
    assert _same_weights(full.weights(), resumed.weights())
    assert resumed.extra["best_step"] == full.extra["best_step"]


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / "c.pt"
    ckpt_mod.save_checkpoint(path, {"w": torch.ones(2), "step": 3, "rows": [{"loss": 0.5}]})
    assert ckpt_mod.load_checkpoint(path)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind
    path.write_bytes(path.read_bytes()[:20])  # truncated
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        ckpt_mod.load_checkpoint(path)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError):
        ckpt_mod.load_checkpoint(tmp_path / "evil.pt")
