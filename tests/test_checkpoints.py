"""Shipped checkpoints: export, load by name with the hash checked, clear errors on damage."""
from __future__ import annotations

import pytest
import torch

from glcl_core import checkpoints
from glcl_core.train import loops
from glcl_core.train.config import make_config


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, ci_split):
    runs, folder = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("pretrained")
    cfg = make_config("ci")
    g = loops.pretrain_global(cfg, ci_split.pool, out=runs / "GD", progress=False)
    checkpoints.export(g.out / "final.pt", "GD", command="python -m glcl_core pretrain --strategy GD --profile ci",
                       wall_seconds=1.0, folder=folder)
    checkpoints.export(g.out / "final.pt", "GD-half", command="(test)", wall_seconds=1.0, folder=folder,
                       dtype="float16")
    return folder, g


def test_export_then_load_by_name_builds_the_configured_model(shipped, ci_split):
    folder, g = shipped
    assert checkpoints.available(folder) == ["GD", "GD-half"]
    ck = checkpoints.load_pretrained("GD", folder)
    assert ck.entry["sha256"] == checkpoints.sha256_of(ck.path) and ck.entry["stage"] == "global"
    net = ck.model()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in g.model.state_dict().items())
    half = checkpoints.load_pretrained("GD-half", folder).model()
    assert all(torch.allclose(half.state_dict()[k].float(), v.float(), atol=1e-2, rtol=1e-2)
               for k, v in g.model.state_dict().items() if v.is_floating_point())
    res = loops.finetune(ck.config, ci_split.pool[:1], [], init=ck.path, progress=False)
    assert res.extra["loaded"] == ["encoder"]


def test_damaged_missing_or_unknown_checkpoint_gives_a_clear_error(shipped):
    folder, _ = shipped
    ck = checkpoints.load_pretrained("GD", folder)
    data = bytearray(ck.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ck.path.write_bytes(bytes(data))
    with pytest.raises(checkpoints.CheckpointError, match=r"GD\.pt: SHA-256 .* does not match the manifest.*"
                                                          r"git checkout.*pretrain --strategy GD"):
        checkpoints.load_pretrained("GD", folder)
    ck.path.unlink()
    with pytest.raises(checkpoints.CheckpointError, match="is missing"):
        checkpoints.load_pretrained("GD", folder)
    with pytest.raises(checkpoints.CheckpointError, match=r"no shipped checkpoint named 'PCL'.*GD, GD-half"):
        checkpoints.load_pretrained("PCL", folder)


def test_every_shipped_checkpoint_matches_its_manifest():
    for name in checkpoints.available():
        ck = checkpoints.load_pretrained(name)
        assert ck.entry["bytes"] <= 10_000_000
        ck.model()
