"""Every stage in the ci profile on the embedded data; resume equality; configs; Dice."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from glcl_core.train import checkpoint as ckpt_mod
from glcl_core.train import evaluation, finetuning, pretrain, pretrain_step, run_folder, stages
from glcl_core.train.config import RunConfig, make_config
from glcl_core.train.engine import run_loop


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
    res = pretrain.pretrain_global(cfg, ci_split.pool, out=tmp_path / "run", progress=False)
    assert len(res.history) == cfg.global_.iterations
    assert np.isfinite(res.history["loss"]).all() and (res.history["loss"] > 0).all()
    assert {"config.json", "history.csv", "last.pt", "final.pt"} <= {p.name for p in (tmp_path / "run").iterdir()}
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["global_"]["strategy"] == strategy
    assert res.extra["seconds"] > 0 and res.extra["cpu_seconds"] > 0


def test_loop_reports_cpu_time_apart_from_wall_time(monkeypatch):
    # a step that waits (as when other programs hold the cores) adds wall time but no CPU time; a step that computes
    # adds both: the chapters print CPU time because their wall times depend on what else the machine runs.
    # The loop's clocks are replaced by counters the steps advance, so nothing here depends on the machine's load.
    from glcl_core.train import engine

    clock = {"wall": 100.0, "cpu": 7.0}
    monkeypatch.setattr(engine, "time", SimpleNamespace(perf_counter=lambda: clock["wall"],
                                                        process_time=lambda: clock["cpu"]))

    def step(wall: float, cpu: float):
        def run(i):
            clock["wall"] += wall
            clock["cpu"] += cpu
            return {"loss": 1.0}
        return run

    loop = {"stateful": {}, "out": None, "resume": False, "checkpoint_every": 100, "log_every": 1,
            "images_per_step": 1, "desc": "test", "progress": False}
    waiting = run_loop(step(wall=0.5, cpu=0.0), iterations=4, **loop)
    assert waiting.seconds == pytest.approx(2.0) and waiting.cpu_seconds == pytest.approx(0.0)
    busy = run_loop(step(wall=0.5, cpu=0.5), iterations=4, **loop)
    assert busy.seconds == pytest.approx(2.0) and busy.cpu_seconds == pytest.approx(2.0)


@pytest.mark.parametrize("strategy", ["LR", "LD"])
def test_pretrain_local_freezes_encoder(ci_split, strategy):
    cfg = make_config("ci", local={"strategy": strategy})
    g = pretrain.pretrain_global(cfg, ci_split.pool, progress=False)
    before = g.weights()
    loc = pretrain.pretrain_local(cfg, ci_split.pool, init=g, progress=False)
    after = loc.weights()
    enc = [k for k in after if k.startswith("encoder.")]
    dec = [k for k in after if k.startswith(f"decoder.0.") and k.endswith("weight")]
    assert enc and dec
    assert all(torch.equal(before[k], after[k]) for k in enc), "encoder (incl. BN statistics) must stay frozen"
    assert any(not torch.equal(before[k], after[k]) for k in dec), "trained decoder blocks must change"
    untouched = [k for k in after if k.startswith(f"decoder.{cfg.local.decoder_blocks}.")]
    assert all(torch.equal(before[k], after[k]) for k in untouched), "blocks after l are not trained"
    assert np.isfinite(loc.history["loss"]).all()


def test_local_health_measures_change_nothing_in_training(ci_split):
    # health=False (the local ablation's choice) skips the held-out measures; the run must be the same run: the
    # monitor has its own sampler and generator and measures in eval mode, so weights and losses are identical
    cfg = make_config("ci", local={"log_every": 1})
    g = pretrain.pretrain_global(cfg, ci_split.pool, progress=False)
    measured = pretrain.pretrain_local(cfg, ci_split.pool, init=g, progress=False, val=ci_split.val)
    skipped = pretrain.pretrain_local(cfg, ci_split.pool, init=g, progress=False, val=ci_split.val, health=False)
    assert _same_weights(measured.weights(), skipped.weights())
    assert measured.history["loss"].tolist() == skipped.history["loss"].tolist()
    assert len(skipped.history) == cfg.local.iterations and "loss_over_chance" in skipped.history
    assert "retrieval_top1" in measured.history and "retrieval_top1" not in skipped.history


def test_local_config_defaults_old_files_and_heads():
    lc = make_config("ci").local
    assert (lc.negatives, lc.ld_pairs, lc.ld_negative_regions) == (None, "official", 4)
    assert (lc.head_norm, lc.projection, lc.projection_dim) == (True, "linear", 128)
    # a config.json written before these fields existed still loads, with the official defaults
    d = make_config("ci").to_dict()
    for key in ("negatives", "ld_pairs", "ld_negative_regions", "head_norm", "projection", "projection_dim"):
        del d["local"][key]
    assert RunConfig.from_dict(d).local == lc
    model = stages.build_model(make_config("ci"))
    c = model.decoder_channels(lc.decoder_blocks)
    head = pretrain.build_local_head(make_config("ci"), model)
    assert isinstance(head.net[1], torch.nn.BatchNorm2d)
    assert (head.projection.in_features, head.projection.out_features) == (c * 9, 128)
    mean = pretrain.build_local_head(make_config("ci", local={"pooling": "mean", "projection_dim": 16}), model)
    assert (mean.projection.in_features, mean.projection.out_features) == (c, 16)
    plain = pretrain.build_local_head(make_config("ci", local={"projection": "none", "head_norm": False}), model)
    assert plain.projection is None and isinstance(plain.net[1], torch.nn.Identity)


def test_pretrain_local_trains_and_saves_the_region_projection(ci_split, tmp_path, monkeypatch):
    cfg = make_config("ci", global_={"iterations": 1}, local={"strategy": "LD", "iterations": 2})
    g = pretrain.pretrain_global(cfg, ci_split.pool, progress=False)
    initial = []
    build = pretrain.build_local_head

    def spy(*args, **kwargs):
        head = build(*args, **kwargs)
        initial.append({k: v.detach().clone() for k, v in head.state_dict().items()})
        return head

    monkeypatch.setattr(pretrain, "build_local_head", spy)
    loc = pretrain.pretrain_local(cfg, ci_split.pool, init=g, out=tmp_path / "loc", progress=False)
    trained = {k: v.detach().cpu() for k, v in loc.head.state_dict().items()}
    assert not torch.equal(initial[0]["projection.weight"], trained["projection.weight"]), "projection is trained"
    assert not torch.equal(initial[0]["net.0.weight"], trained["net.0.weight"])
    saved = ckpt_mod.load_checkpoint(tmp_path / "loc" / "final.pt")["head"]
    assert torch.equal(saved["projection.weight"].cpu(), trained["projection.weight"])
    assert "net.1.running_mean" in saved and "net.3.bias" not in saved
    # the earlier behaviour as options: no projection, no batch norm, random negatives, symmetric L^D
    old = make_config("ci", global_={"iterations": 1}, local={
        "strategy": "LD", "iterations": 2, "projection": "none", "head_norm": False, "negatives": "random",
        "ld_pairs": "symmetric"})
    res = pretrain.pretrain_local(old, ci_split.pool, init=g, progress=False)
    assert res.head.projection is None and np.isfinite(res.history["loss"]).all()


def test_finetune_and_evaluate(ci_split):
    cfg = make_config("ci")
    res = finetuning.finetune(cfg, ci_split.pool[:1], ci_split.val, progress=False)
    assert res.extra["best_step"] in (3, 6) and 0.0 <= res.extra["best_val_dice"] <= 1.0
    assert "val_dice" in res.history.columns
    scores = evaluation.evaluate(res.model, ci_split.test, n_classes=cfg.model.n_classes)
    assert len(scores) == len(ci_split.test) * (cfg.model.n_classes - 1)
    assert scores["dice"].between(0, 1).all()
    # the embedded volumes come through the NIfTI loader: Dice on each volume's native grid
    assert scores.attrs["resolution"] == "native" and set(scores["resolution"]) == {"native"}


def test_finetune_loads_pretrained_parts(ci_split):
    cfg = make_config("ci")
    g = pretrain.pretrain_global(cfg, ci_split.pool, progress=False)
    res = finetuning.finetune(cfg, ci_split.pool[:1], [], init=g, progress=False)
    assert res.extra["loaded"] == ["encoder"]
    loc = pretrain.pretrain_local(cfg, ci_split.pool, init=g, progress=False)
    res = finetuning.finetune(cfg, ci_split.pool[:1], [], init=loc, progress=False)
    assert res.extra["loaded"] == ["encoder", "decoder"]


def test_finetune_requires_labels(ci_split):
    cfg = make_config("ci")
    vol = ci_split.pool[0]
    unlabelled = type(vol)(name="u", image=vol.image, label=None, spacing=vol.spacing)
    with pytest.raises(ValueError, match="need labels"):
        finetuning.finetune(cfg, [unlabelled], [], progress=False)


def test_dice_per_class_known_values():
    target = np.zeros((1, 4, 4), dtype=np.int64)
    target[0, :2] = 1  # 8 voxels of class 1
    pred = np.zeros_like(target)
    pred[0, :1] = 1  # 4 voxels, all inside
    d = evaluation.dice_per_class(pred, target, 3)
    assert d[1] == pytest.approx(2 * 4 / 12)
    assert d[0] == pytest.approx(2 * 8 / (12 + 8))
    assert np.isnan(d[2])  # absent from both: undefined, not 1


def test_segmentation_loss_prefers_correct_logits():
    labels = torch.randint(0, 4, (2, 8, 8))
    good = torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float() * 10
    bad = torch.roll(good, 1, dims=1)
    for kind in ("dice", "dice+ce"):
        assert finetuning.segmentation_loss(good, labels, kind) < 0.05 < finetuning.segmentation_loss(bad, labels, kind)
    with pytest.raises(ValueError):
        finetuning.segmentation_loss(good, labels, "focal")


def test_run_folder_never_overwritten(ci_split, tmp_path):
    cfg = make_config("ci", global_={"iterations": 1})
    pretrain.pretrain_global(cfg, ci_split.pool, out=tmp_path / "r", progress=False)
    marker = (tmp_path / "r" / "final.pt").read_bytes()
    with pytest.raises(run_folder.RunExistsError):
        pretrain.pretrain_global(cfg, ci_split.pool, out=tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "final.pt").read_bytes() == marker
    other = make_config("ci", global_={"iterations": 1, "lr": 0.5})
    with pytest.raises(ValueError, match="differs"):
        pretrain.pretrain_global(other, ci_split.pool, out=tmp_path / "r", resume=True, progress=False)
    pretrain.pretrain_global(cfg, ci_split.pool, out=tmp_path / "r", overwrite=True, progress=False)


def _interrupted_at_step(monkeypatch, n: int, run) -> None:
    """Run ``run()`` with its ``n``-th optimiser step raising KeyboardInterrupt (a session that drops mid-run)."""
    real_step = pretrain._optimiser_step  # the stage's one optimiser call per step
    calls = {"n": 0}

    def crashing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("session dropped")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(pretrain, "_optimiser_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(pretrain, "_optimiser_step", real_step)


def test_resume_after_crash_gives_identical_weights(ci_split, tmp_path, monkeypatch):
    """Interrupt global pre-training mid-run, resume, and end with exactly the uninterrupted weights."""
    cfg = make_config("ci", global_={"strategy": "GD", "iterations": 6, "checkpoint_every": 2})
    full = pretrain.pretrain_global(cfg, ci_split.pool, out=tmp_path / "full", progress=False)

    # after the step-2 checkpoint, before the step-4 one
    _interrupted_at_step(monkeypatch, 4,
                         lambda: pretrain.pretrain_global(cfg, ci_split.pool, out=tmp_path / "cut", progress=False))
    assert ckpt_mod.load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 2
    resumed = pretrain.pretrain_global(cfg, ci_split.pool, out=tmp_path / "cut", resume=True, progress=False)
    assert _same_weights(full.weights(), resumed.weights())
    assert _same_weights(full.head.state_dict(), resumed.head.state_dict())
    assert list(resumed.history["loss"]) == list(full.history["loss"])


def test_pcl_preset_values_and_profiles():
    from glcl_core.train.config import PRESETS

    ci, cpu, gpu = (make_config(p, preset="pcl") for p in ("ci", "cpu", "gpu"))
    for cfg in (ci, cpu, gpu):
        g = cfg.global_
        assert (g.strategy, g.optimizer, g.lr, g.momentum, g.weight_decay) == ("PCL", "sgd", 0.1, 0.9, 1e-5)
        assert (g.schedule, g.warmup, g.head, g.head_hidden, g.head_dim) == ("cosine", 0, "pooled", None, 512)
        assert (g.augmentation, g.temperature, g.base_temperature) == ("pcl", 0.1, 0.07)
    # the preset sets the batch size, except under ci, which keeps its sizes; iterations stay the profile's
    plain_ci = make_config("ci")
    assert (ci.global_.batch_size, ci.global_.iterations) == (plain_ci.global_.batch_size, plain_ci.global_.iterations)
    assert cpu.global_.batch_size == gpu.global_.batch_size == 32
    assert gpu.global_.iterations == make_config("gpu").global_.iterations
    # overrides win over the preset; the GLCL defaults are untouched without a preset
    assert make_config("ci", preset="pcl", global_={"lr": 0.05, "strategy": "GR"}).global_.lr == 0.05
    g = make_config("gpu").global_
    assert (g.optimizer, g.lr, g.schedule, g.warmup, g.weight_decay, g.head, g.head_dim, g.gd_pairing) == (
        "adam", 1e-3, "constant", 0, 0.0, "dense", 128, "all")
    assert g.augmentation == "glcl"
    # the short-budget profiles change only the head and the intensity draws (BUDGET_GLOBAL_STAGE)
    for profile in ("ci", "cpu"):
        b = make_config(profile).global_
        assert (b.head, b.augmentation, b.optimizer, b.lr, b.head_dim) == (
            "pooled", "glcl-per-image", "adam", 1e-3, 128)
    assert RunConfig.from_dict(cpu.to_dict()) == cpu
    assert set(PRESETS) == {"pcl"}
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("ci", preset="simclr")


def test_sgd_cosine_lr_follows_pcl_scheduler():
    """PCL's LR_Scheduler("cos"): lr_T = 0.5 * lr * (1 + cos(pi * T / N)), set before step T of N."""
    import math

    g = make_config("cpu", preset="pcl", global_={"iterations": 8}).global_
    param = torch.nn.Parameter(torch.zeros(2))
    optimiser = pretrain._global_optimiser([param], g)
    assert isinstance(optimiser, torch.optim.SGD)
    group = optimiser.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.9, 1e-5, False)
    schedule = pretrain._lr_schedule(optimiser, g)
    used = []
    for _ in range(g.iterations):
        used.append(group["lr"])
        param.grad = torch.ones(2)
        optimiser.step()
        schedule.step()
    want = [0.5 * 0.1 * (1 + math.cos(math.pi * t / 8)) for t in range(8)]
    assert used == pytest.approx(want, rel=1e-12, abs=0)
    assert used[0] == 0.1 and used[4] == pytest.approx(0.05) and used[-1] > 0
    # warm-up (ours): (t + 1) / warmup for the first steps; constant: the base lr throughout
    f = pretrain.LRFactor("cosine", 8, warmup=2)
    assert [f(0), f(1)] == pytest.approx([0.5 * want[0] / 0.1, want[1] / 0.1])
    assert [pretrain.LRFactor("constant", 8)(t) for t in (0, 7)] == [1.0, 1.0]
    glcl = make_config("cpu").global_
    assert isinstance(pretrain._global_optimiser([param], glcl), torch.optim.Adam)
    with pytest.raises(ValueError, match="schedule"):
        pretrain.LRFactor("step", 8)
    with pytest.raises(ValueError, match="optimizer"):
        pretrain._global_optimiser([param], make_config("cpu", global_={"optimizer": "rmsprop"}).global_)


def test_gd_pairing_reaches_the_loss_masks():
    from glcl_core.contrastive.global_masks import global_masks

    vol = torch.arange(4).repeat_interleave(2)
    meta = {"image": torch.arange(16) % 8, "volume": torch.cat([vol, vol]),
            "partition": torch.arange(2).repeat(8), "position": None}
    for pairing in ("all", "neighbour"):
        cfg = make_config("ci", global_={"strategy": "GD", "gd_pairing": pairing})
        got = pretrain_step._global_masks(meta, cfg)
        want = global_masks("GD", **meta, pairing=pairing)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert make_config("ci").global_.gd_pairing == "all"


def test_pcl_base_temperature_scales_loss_and_chance():
    """PCL's code multiplies its loss by tau / 0.07; the chance level follows, so loss_over_chance does not."""
    from glcl_core.batch import Batch

    torch.manual_seed(0)
    embed = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)).double()
    n = 6
    batch = Batch(torch.randn(n, 1, 4, 4, dtype=torch.float64), None, torch.arange(n), torch.zeros(n, dtype=torch.long),
                  torch.zeros(n, dtype=torch.long), torch.arange(1, n + 1, dtype=torch.float64) / n)
    views = Batch.cat([batch, batch.with_images(batch.images + 0.1)])
    out = {}
    for base in (None, 0.07):
        cfg = make_config("ci", global_={"strategy": "PCL", "threshold": 0.35, "base_temperature": base})
        stats: dict = {}
        out[base] = (pretrain_step._global_views_loss(embed, views, cfg, stats).item(), stats["chance"])
    assert out[0.07][0] == pytest.approx(out[None][0] * 0.1 / 0.07, rel=1e-12)
    assert out[0.07][0] / out[0.07][1] == pytest.approx(out[None][0] / out[None][1], rel=1e-12)

def test_resume_with_pcl_preset_and_lr_schedule_gives_identical_weights(ci_split, tmp_path, monkeypatch):
    """SGD + cosine + pooled 512-d head: interrupt after the step-2 checkpoint, resume, end bit-identical (the
    schedule's state is in the checkpoint: without it the resumed lr sequence, hence the weights, differ)."""
    cfg = make_config("ci", preset="pcl", global_={"iterations": 3, "checkpoint_every": 1, "log_every": 3})
    full = pretrain.pretrain_global(cfg, ci_split.pool, out=tmp_path / "full", progress=False)
    assert full.head.out_dim == 512 and full.head.hidden == full.model.bottleneck_shape[0]
    saved = ckpt_mod.load_checkpoint(tmp_path / "full" / "last.pt")["state"]
    assert saved["schedule"]["last_epoch"] == 3
    assert saved["optimiser"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # cos(pi) after the end

    # after the step-2 checkpoint, before the step-3 one
    _interrupted_at_step(monkeypatch, 3,
                         lambda: pretrain.pretrain_global(cfg, ci_split.pool, out=tmp_path / "cut", progress=False))
    cut = ckpt_mod.load_checkpoint(tmp_path / "cut" / "last.pt")
    assert cut["step"] == 2 and cut["state"]["schedule"]["last_epoch"] == 2
    resumed = pretrain.pretrain_global(cfg, ci_split.pool, out=tmp_path / "cut", resume=True, progress=False)
    assert _same_weights(full.weights(), resumed.weights())
    assert _same_weights(full.head.state_dict(), resumed.head.state_dict())
    assert list(resumed.history["loss"]) == list(full.history["loss"])


def test_resume_finetune_keeps_best_model(ci_split, tmp_path):
    cfg = make_config("ci")
    full = finetuning.finetune(cfg, ci_split.pool[:1], ci_split.val, out=tmp_path / "a", progress=False)
    half = make_config("ci", finetune={"iterations": 3})
    finetuning.finetune(half, ci_split.pool[:1], ci_split.val, out=tmp_path / "b", progress=False)
    resumed = finetuning.finetune(cfg, ci_split.pool[:1], ci_split.val, out=tmp_path / "b", resume=True, progress=False)
    assert _same_weights(full.weights(), resumed.weights())
    assert resumed.extra["best_step"] == full.extra["best_step"]


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / "c.pt"
    ckpt_mod.save_checkpoint(path, {"w": torch.ones(2), "step": 3, "rows": [{"loss": 0.5}]})
    assert ckpt_mod.load_checkpoint(path)["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)
    ckpt_mod.atomic_write_text(tmp_path / "m.json", "{}")
    for written in (path, tmp_path / "m.json"):  # readable by others as any new file, not mkstemp's 0600
        assert written.stat().st_mode & 0o777 == 0o666 & ~umask
    (tmp_path / "m.json").unlink()
    path.write_bytes(path.read_bytes()[:20])  # truncated
    with pytest.raises(ValueError, match="is a damaged or truncated PyTorch checkpoint"):
        ckpt_mod.load_checkpoint(path)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a glcl_core checkpoint") as err:
        ckpt_mod.load_checkpoint(tmp_path / "evil.pt")
    assert "weights_only" not in str(err.value)


def test_segmentation_loss_glcl_is_per_image_dice_with_background():
    """Two 2 x 2 images, 2 classes, probabilities set through log-probability logits. Image 1: labels
    [[0, 1], [1, 1]], p(class 1) [[.25, .75], [.5, .5]]: Dice class 1 = 2 * 1.75 / (2 + 3) = 0.7, class 0 =
    2 * 0.75 / (2 + 1) = 0.5. Image 2: all background, p(class 1) = .25: class 1 = 0 / (1 + 0) = 0, class 0 =
    2 * 3 / (3 + 4) = 6/7. GLCL's loss is 1 minus the mean of the four."""
    p1 = torch.tensor([[[0.25, 0.75], [0.5, 0.5]], [[0.25, 0.25], [0.25, 0.25]]], dtype=torch.float64)
    logits = torch.stack([1 - p1, p1], dim=1).log().requires_grad_(True)
    labels = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [0, 0]]])
    loss = finetuning.segmentation_loss(logits, labels, "glcl")
    assert float(loss.detach()) == pytest.approx(1 - (0.7 + 0.5 + 0.0 + 6 / 7) / 4, rel=1e-9)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # "dice": one batch-wide Dice of the foreground class: 2 * 1.75 / ((2 + 1) + 3)
    batch = finetuning.segmentation_loss(logits.detach(), labels, "dice")
    assert float(batch) == pytest.approx(1 - (3.5 + 1e-5) / (6 + 1e-5), rel=1e-9)


def test_segmentation_loss_glcl_gradient_finite_for_absent_classes():
    """A class absent from an image and (to float32 precision) from its prediction: Dice 0, finite gradients."""
    labels = torch.zeros(2, 8, 8, dtype=torch.int64)
    labels[0, 2:5, 2:5] = 1
    logits = torch.zeros(2, 3, 8, 8)
    logits[:, 0] = 100.0  # softmax underflows to exactly 0 for classes 1 and 2
    logits.requires_grad_(True)
    loss = finetuning.segmentation_loss(logits, labels, "glcl")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    good = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 10
    assert float(finetuning.segmentation_loss(good, labels, "glcl")) == pytest.approx(1 - 3 / 6, abs=1e-3)  # 3 absent


def test_finetune_loss_from_config(ci_split):
    cfg = make_config("ci", finetune={"loss": "glcl", "iterations": 2})
    res = finetuning.finetune(cfg, ci_split.pool[:1], [], progress=False)
    assert np.isfinite(res.history["loss"]).all()
    with pytest.raises(ValueError, match="finetune.loss"):
        finetuning.finetune(make_config("ci", finetune={"loss": "focal"}), ci_split.pool[:1], [], progress=False)
    with pytest.raises(ValueError, match="val_resolution"):
        finetuning.finetune(cfg, ci_split.pool[:1], [], progress=False, val_resolution="original")


def test_frozen_probe_trains_only_what_was_not_pre_trained(ci_split):
    """FinetuneConfig.freeze: the encoder (and decoder blocks loaded from a local stage) keep their weights and
    norm statistics; the rest of the decoder and the head change."""
    cfg = make_config("ci", finetune={"freeze": True})
    g = pretrain.pretrain_global(cfg, ci_split.pool, progress=False)
    loc = pretrain.pretrain_local(cfg, ci_split.pool, init=g, progress=False)
    loaded = {k: v.clone() for k, v in loc.model.state_dict().items()}
    res = finetuning.finetune(cfg, ci_split.pool[:1], [], init=loc, progress=False)
    after = res.model.state_dict()
    enc = [k for k in after if k.startswith("encoder.")]
    assert enc and all(torch.equal(after[k], loaded[k]) for k in enc)  # BN running stats included
    blocks = [f"decoder.{i}" for i in range(cfg.local.decoder_blocks)]  # what the local stage trained
    assert res.extra["frozen"] == ["encoder"] + blocks
    for block in blocks:
        assert all(torch.equal(after[k], loaded[k]) for k in after if k.startswith(block + "."))
    rest = [k for k in after if k.startswith(f"decoder.{cfg.local.decoder_blocks}.") and after[k].is_floating_point()]
    assert rest and any(not torch.equal(after[k], loaded[k]) for k in rest)  # the last block was trained
    # random initialisation, frozen: a random-encoder probe (the encoder stays at its initial values)
    r1 = finetuning.finetune(cfg, ci_split.pool[:1], [], progress=False)
    stages._seed_everything(cfg.seed)
    start = stages.build_model(cfg).state_dict()
    assert all(torch.equal(r1.model.state_dict()[k], start[k]) for k in enc)
    assert any(not torch.equal(r1.model.state_dict()[k], start[k]) for k in after if k not in enc
               and after[k].is_floating_point())
    # unfrozen fine-tuning changes the encoder
    r2 = finetuning.finetune(make_config("ci"), ci_split.pool[:1], [], init=loc, progress=False)
    assert any(not torch.equal(r2.model.state_dict()[k], loaded[k]) for k in enc if loaded[k].is_floating_point())


def test_gpu_profile_runs_one_step_of_every_stage_at_paper_shapes():
    """The gpu profile where there is no GPU: its data (192 x 192 at 1.25 mm), its 6-level U-Net and its batch sizes,
    one optimisation step of the global stage (G^D and PCL), the local stage and fine-tuning, on the CPU."""
    gpu = make_config("gpu")
    assert gpu.data.size == 192 and len(gpu.model.channels) == 6
    from glcl_core.experiment import prepare_split

    split = prepare_split(gpu)
    assert split.pool[0].image.shape[1:] == (192, 192)
    for strategy in ("GD", "PCL"):
        cfg = make_config("gpu", global_={"strategy": strategy, "iterations": 1, "log_every": 1})
        stage = pretrain.pretrain_global(cfg, split.pool, device="cpu", progress=False)
        row = stage.history.iloc[-1]
        assert np.isfinite(row["loss"]) and row["step"] == 1 and len(stage.history) == 1
    cfg = make_config("gpu", global_={"iterations": 1}, local={"iterations": 1, "log_every": 1})
    init = pretrain.pretrain_global(cfg, split.pool, device="cpu", progress=False)
    local = pretrain.pretrain_local(cfg, split.pool, init=init, device="cpu", progress=False)
    assert np.isfinite(local.history.iloc[-1]["loss"])
    encoder = [k for k in init.weights() if k.startswith("encoder.")]
    assert all(torch.equal(local.weights()[k], init.weights()[k]) for k in encoder)  # frozen in the local stage
    cfg = make_config("gpu", finetune={"iterations": 1, "log_every": 1, "eval_every": 10**9})
    tuned = finetuning.finetune(cfg, split.pool[:2], [], device="cpu", progress=False)
    assert np.isfinite(tuned.history.iloc[-1]["loss"])
    logits = tuned.model.eval()(torch.zeros(1, 1, 192, 192))
    assert logits.shape == (1, gpu.model.n_classes, 192, 192)


def test_default_profile_never_picks_paper_scale(monkeypatch):
    """A chapter opened on a GPU (Colab) runs the minutes-long cpu profile unless the paper scale is asked for."""
    from glcl_core import profiles

    monkeypatch.delenv("GLCL_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert profiles.default_profile() == "cpu"
    monkeypatch.setenv("GLCL_PROFILE", "gpu")
    assert profiles.default_profile() == "gpu"


def test_autocast_dtype_avoids_emulated_bf16(monkeypatch):
    """A T4 (compute capability 7.5) reports bf16 as supported through emulation: it gets fp16, an A100 bf16."""
    from glcl_core.device import autocast_dtype

    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    assert autocast_dtype(cuda) == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert autocast_dtype(cuda) == torch.bfloat16
    assert autocast_dtype(torch.device("cpu")) is None
