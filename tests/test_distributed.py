"""Data-parallel training: 2 CPU processes (gloo, loopback only) give the single-process loss and gradients of the
same global batch; torchrun runs the command line with one run folder written by rank 0."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from glcl_core import distributed
from glcl_core.batch import Batch
from glcl_core.data.volume import Volume
from glcl_core.models import GlobalHead, LocalHead
from glcl_core.samplers import LabelledSliceSampler, PartitionSampler, RandomSliceSampler
from glcl_core.train import finetuning, pretrain_step, stages
from glcl_core.train.checkpoint import load_checkpoint
from glcl_core.train.config import make_config

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

CASES = ("GD", "PCL", "LR", "finetune", "finetune_glcl")
WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _volumes() -> list[Volume]:
    rng = np.random.default_rng(0)
    vols = []
    for i in range(6):
        z = 10 + i
        image = rng.standard_normal((z, 32, 32)).astype(np.float32)
        label = (rng.random((z, 32, 32)) * 3).astype(np.int64)
        vols.append(Volume(name=f"v{i}", image=image, label=label, spacing=(1.0, 1.0, 1.0)))
    return vols


def _config():
    # GD with 3 volumes: an uneven split (1 and 2 volumes) exercises gathers of different sizes
    return make_config(
        "ci", data={"size": 32, "n_partitions": 4}, model={"channels": (4, 8, 16), "n_classes": 3},
        global_={"n_volumes": 3, "batch_size": 8}, local={"batch_size": 4, "decoder_blocks": 1},
        finetune={"batch_size": 6},
    )


def _views(batch: Batch, noise: torch.Tensor) -> Batch:
    """Two deterministic 'views' of each slice that do not depend on how the batch is split."""
    images = batch.images.double()
    v1 = batch.with_images(images * 0.9)
    v2 = batch.with_images(images + 0.3 * noise[batch.image])
    return Batch.cat([v1, v2])


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in module.named_parameters() if p.grad is not None}


def compute_cases(rank: int, world: int) -> dict[str, dict]:
    """Loss, gradients and batch-norm statistics of each case on this rank's share of a fixed global batch,
    through the training loops' own code (DDP, gathers, global batch norm when distributed), in float64."""
    cfg = _config()
    vols = _volumes()
    noise = torch.randn(sum(v.n_slices for v in vols), 1, 32, 32, generator=torch.Generator().manual_seed(5),
                        dtype=torch.float64)
    out = {}
    for case in CASES:
        torch.manual_seed(0)
        model = stages.build_model(cfg).double()
        if case in ("GD", "PCL"):
            cfg.global_.strategy = case
            c, h, _ = model.bottleneck_shape
            head = GlobalHead(c, h, hidden=32, out_dim=16).double()
            sampler = (PartitionSampler(vols, cfg.global_.n_volumes, 4, seed=1) if case == "GD"
                       else RandomSliceSampler(vols, cfg.global_.batch_size, seed=1))
            batch = sampler.shard(rank, world).sample()
            net = stages._prepare(cfg, pretrain_step._GlobalEmbedder(model, head), model)
            loss = pretrain_step._global_views_loss(net, _views(batch, noise), cfg)
            trained = [model.encoder, head]
        elif case == "LR":
            head = LocalHead(model.decoder_channels(1)).double()
            model.encoder.eval()
            sampler = RandomSliceSampler(vols, cfg.local.batch_size, seed=2).shard(rank, world)
            batch = sampler.sample()
            net = stages._prepare(cfg, pretrain_step._LocalMaps(model, head, 1), model)
            loss = pretrain_step._local_views_loss(model, net, batch, _views(batch, noise), cfg)
            trained = [model.decoder[0], head]
        else:
            sampler = LabelledSliceSampler(vols, cfg.finetune.batch_size, seed=3).shard(rank, world)
            batch = sampler.sample()
            net = stages._prepare(cfg, model)
            kind = "glcl" if case == "finetune_glcl" else "dice+ce"  # glcl: per-image Dice over the global batch
            loss = finetuning.segmentation_loss(net(batch.images.double()), batch.labels, kind)
            trained = [model]
        loss.backward()
        grads = {f"{i}.{k}": g for i, m in enumerate(trained) for k, g in _grads(m).items()}
        stats = {k: b.clone() for k, b in model.state_dict().items() if "running_" in k}
        out[case] = {"loss": loss.detach(), "grads": grads, "stats": stats, "n": len(batch)}
    return out


def _worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    assert distributed.init_distributed()
    torch.set_num_threads(1)
    try:
        torch.save(compute_cases(rank, world), os.path.join(folder, f"rank{rank}.pt"))
    finally:
        distributed.cleanup()


def test_helpers_are_identities_in_one_process():
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.gather_with_grad(x) is x and distributed.all_reduce_with_grad(x) is x
    assert not distributed.init_distributed()  # not launched by torchrun


def test_sampler_shards_are_disjoint_and_make_the_global_batch():
    vols = _volumes()
    for make in (lambda: PartitionSampler(vols, 3, 4, seed=7), lambda: RandomSliceSampler(vols, 8, seed=7),
                 lambda: LabelledSliceSampler(vols, 6, seed=7)):
        whole = make()
        parts = [make().shard(r, WORLD) for r in range(WORLD)]
        for _ in range(3):
            full = whole.sample().image
            shards = [p.sample().image for p in parts]
            assert torch.equal(torch.cat(shards), full)
            assert not set(shards[0].tolist()) & set(shards[1].tolist())
        assert all(p.state_dict()["batches_drawn"] == 3 for p in parts)
    gd = [PartitionSampler(vols, 3, 4, seed=7).shard(r, WORLD).sample() for r in range(WORLD)]
    assert [len(set(b.volume.tolist())) for b in gd] == [1, 2]  # whole volumes per rank
    with pytest.raises(ValueError, match="n_volumes=1 cannot be shared among 2 processes"):
        PartitionSampler(vols, 1, 4).shard(0, 2)


def test_two_gloo_processes_match_one_process(tmp_path):
    """G^D, PCL, L^R and fine-tuning (dice+ce and GLCL's per-image Dice): the 2-process loss, the DDP-averaged
    gradients and the batch-norm running statistics equal those of one process on the same global batch (float64)."""
    torch.multiprocessing.spawn(_worker, args=(WORLD, _free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    single = compute_cases(0, 1)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for case in CASES:
        ref = single[case]
        assert sum(r[case]["n"] for r in ranks) == ref["n"]
        for r in ranks:
            got = r[case]
            torch.testing.assert_close(got["loss"], ref["loss"], rtol=1e-10, atol=1e-12, msg=case)
            assert got["grads"].keys() == ref["grads"].keys() and ref["grads"]
            for k in ref["grads"]:
                torch.testing.assert_close(got["grads"][k], ref["grads"][k], rtol=1e-8, atol=1e-11,
                                           msg=f"{case} {k}")
            for k in ref["stats"]:
                torch.testing.assert_close(got["stats"][k], ref["stats"][k], rtol=1e-8, atol=1e-11,
                                           msg=f"{case} {k}")


def _torchrun(*args: str, port: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), "--master-addr",
           "127.0.0.1", "--master-port", str(port), "-m", "glcl_core", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))


def test_torchrun_pretrain_writes_one_run_and_resumes(tmp_path):
    out = tmp_path / "pre"
    first = _torchrun("pretrain", "--profile", "ci", "--iterations", "2", "--out", str(out), port=_free_port())
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("pre-training GD") == 1  # rank 0 prints, rank 1 does not
    assert load_checkpoint(out / "global" / "last.pt")["step"] == 2
    resumed = _torchrun("pretrain", "--profile", "ci", "--resume", "--out", str(out), port=_free_port())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == ["global"]
    run = out / "global"
    # the marker of a glcl_core run folder, written by rank 0 only; its lock is released
    assert sorted(p.name for p in run.iterdir()) == [".glcl_run.json", "config.json", "final.pt", "history.csv",
                                                    "last.pt"]
    last, final = load_checkpoint(run / "last.pt"), load_checkpoint(run / "final.pt")
    assert last["step"] == make_config("ci").global_.iterations == 4
    assert [row["step"] for row in last["history"]] == [1, 2, 3, 4]  # steps 1-2 kept from the first launch
    assert len(last["state"]["augment"]["ranks"]) == WORLD  # each rank's augmentation stream is resumable
    assert set(final["model"]) == set(stages.build_model(make_config("ci")).state_dict())
    for k, v in last["state"]["model"].items():
        assert torch.equal(v, final["model"][k])
    assert json.loads((run / "config.json").read_text())["global_"]["strategy"] == "GD"
    assert len((run / "history.csv").read_text().splitlines()) == 5
