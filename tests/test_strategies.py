"""Strategies as masks: hand-written expected matrices, PCL = SupCon, local losses against loops from definitions."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from glcl_core.batch import Batch
from glcl_core.losses import grid_region_corners, info_nce_loop_reference, sparse_region_corners
from glcl_core.strategies import (
    GLOBAL_REDUCTION,
    GLOBAL_STRATEGIES,
    global_loss,
    global_masks,
    local_loss,
    local_masks,
    local_region_corners,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def m(rows: str) -> torch.Tensor:
    """'0101 1010' -> bool matrix."""
    return torch.tensor([[c == "1" for c in row] for row in rows.split()], dtype=torch.bool)


# 2 volumes x 2 partitions x 2 views. Index = view * 4 + slice; slices: (vol 0, part 0), (0, 1), (1, 0), (1, 1).
IMAGE = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
VOLUME = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
PARTITION = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
POSITION = torch.tensor([0.2, 0.7, 0.25, 0.9, 0.2, 0.7, 0.25, 0.9])

OTHER_VIEW = m("00001000 00000100 00000010 00000001 10000000 01000000 00100000 00010000")
ALL_OTHERS = m("01111111 10111111 11011111 11101111 11110111 11111011 11111101 11111110")
OTHER_PARTITION = m("01010101 10101010 01010101 10101010 01010101 10101010 01010101 10101010")
GD_POSITIVES = m("00101010 00010101 10001010 01000101 10100010 01010001 10101000 01010100")
# |position difference| < 0.1: 0.2 ~ 0.25 (other volume, same height), 0.7 and 0.9 only match their own other view
PCL_POSITIVES = m("00101010 00000100 10001010 00000001 10100010 01000000 10101000 00010000")

EXPECTED = {
    "GR": (OTHER_VIEW, ALL_OTHERS),
    "GD-": (OTHER_VIEW, OTHER_PARTITION),
    "GD": (GD_POSITIVES, OTHER_PARTITION),
    "PCL": (PCL_POSITIVES, ALL_OTHERS),
}


# ---------------------------------------------------------------------------------------------------------------
# Global masks
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", GLOBAL_STRATEGIES)
def test_global_masks_hand_written(strategy):
    pos, neg = global_masks(strategy, IMAGE, VOLUME, PARTITION, POSITION, threshold=0.1)
    want_pos, want_neg = EXPECTED[strategy]
    assert pos.dtype == torch.bool and neg.dtype == torch.bool
    assert torch.equal(pos, want_pos), f"{strategy} positives\n{pos.int()}"
    assert torch.equal(neg, want_neg), f"{strategy} negatives\n{neg.int()}"


def test_gd_minus_leaves_same_partition_of_other_volumes_out():
    pos, neg = global_masks("GD-", IMAGE, VOLUME, PARTITION, POSITION)
    # slice (vol 0, part 0) and (vol 1, part 0): neither positive nor negative
    assert not pos[0, 2] and not neg[0, 2] and not pos[0, 6] and not neg[0, 6]


def test_gd_same_volume_same_partition_other_slice_is_neither():
    image = torch.tensor([0, 1, 2, 0, 1, 2])
    volume = torch.tensor([0, 0, 1, 0, 0, 1])
    partition = torch.tensor([0, 0, 0, 0, 0, 0])
    pos, neg = global_masks("GD", image, volume, partition, None)
    assert not pos[0, 1] and not neg[0, 1]  # another slice of the same partition of the same volume
    assert pos[0, 2] and pos[0, 3] and pos[0, 5]  # other volume (both views) and own other view
    assert not neg.any()  # a single partition: no negatives at all


def test_pcl_threshold_and_metadata_it_ignores():
    pos, _ = global_masks("PCL", None, None, None, POSITION, threshold=0.35)
    assert pos[1, 3] and pos[1, 7]  # |0.7 - 0.9| < 0.35
    assert not pos.diagonal().any()


def test_global_reduction_table():
    assert set(GLOBAL_REDUCTION) == set(GLOBAL_STRATEGIES)
    assert GLOBAL_REDUCTION["PCL"] == "anchors"
    assert all(GLOBAL_REDUCTION[s] == "pairs" for s in ("GR", "GD-", "GD"))


def test_global_errors():
    with pytest.raises(ValueError, match="GR, GD-, GD, PCL"):
        global_masks("GX", IMAGE, VOLUME, PARTITION, POSITION)
    with pytest.raises(ValueError, match="partition"):
        global_masks("GD", IMAGE, VOLUME, -torch.ones(8, dtype=torch.long), POSITION)
    with pytest.raises(ValueError, match="entries"):
        global_masks("GD", IMAGE, VOLUME[:5], PARTITION, POSITION)
    with pytest.raises(ValueError, match="1-D"):
        global_masks("GR", IMAGE[None], VOLUME, PARTITION, POSITION)
    with pytest.raises(ValueError, match="threshold"):
        global_masks("PCL", IMAGE, VOLUME, PARTITION, POSITION, threshold=0)
    with pytest.raises(ValueError, match="'image'"):
        global_masks("GR", None, VOLUME, PARTITION, POSITION)
    with pytest.raises(ValueError, match="GR, GD-, GD, PCL"):
        global_loss(torch.randn(8, 4), {"image": IMAGE}, "SimCLR")
    with pytest.raises(ValueError, match="entries"):
        global_loss(torch.randn(6, 4), {"image": IMAGE}, "GR")
    with pytest.raises(TypeError, match="Batch"):
        global_loss(torch.randn(8, 4), [IMAGE], "GR")


# ---------------------------------------------------------------------------------------------------------------
# Global losses
# ---------------------------------------------------------------------------------------------------------------
def supcon_reference(z, position, threshold, temperature, base_temperature):
    """PCL's published loss, written from the paper/code description (SupCon with a positional positive mask)."""
    f = F.normalize(z, dim=1)
    logits = f @ f.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    n = z.shape[0]
    not_self = 1.0 - torch.eye(n, dtype=z.dtype)
    pos = ((position[:, None] - position[None, :]).abs() < threshold).to(z.dtype) * not_self
    log_prob = logits - torch.log((torch.exp(logits) * not_self).sum(dim=1, keepdim=True))
    n_pos = pos.sum(dim=1)
    has = n_pos > 0
    mean_log_prob_pos = (pos * log_prob).sum(dim=1)[has] / n_pos[has]
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


@pytest.mark.parametrize("threshold", [0.1, 0.35])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_pcl_equals_supcon(threshold, temperature):
    g = torch.Generator().manual_seed(0)
    n_slices = 32
    position = torch.rand(n_slices, generator=g, dtype=torch.float64)
    position = torch.cat([position, position])  # two views
    z = torch.randn(2 * n_slices, 16, generator=g, dtype=torch.float64)
    meta = {"image": torch.arange(2 * n_slices) % n_slices, "position": position}
    got = global_loss(z, meta, "PCL", temperature=temperature, threshold=threshold)
    want = supcon_reference(z, position, threshold, temperature, base_temperature=temperature)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_pcl_equals_supcon_with_anchors_lacking_positives():
    g = torch.Generator().manual_seed(1)
    position = torch.tensor([0.05, 0.1, 0.5, 0.9, 0.93, 0.3], dtype=torch.float64)  # 0.5 and 0.3 are alone
    z = torch.randn(6, 8, generator=g, dtype=torch.float64)
    got = global_loss(z, {"position": position}, "PCL", temperature=0.1, threshold=0.1)
    torch.testing.assert_close(got, supcon_reference(z, position, 0.1, 0.1, 0.1), rtol=1e-10, atol=1e-10)


def test_gr_equals_nt_xent():
    g = torch.Generator().manual_seed(2)
    n = 12
    z = torch.randn(2 * n, 8, generator=g, dtype=torch.float64)
    f = F.normalize(z, dim=1)
    logits = (f @ f.T / 0.1).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = (torch.arange(2 * n) + n) % (2 * n)
    want = F.cross_entropy(logits, target)
    got = global_loss(z, {"image": torch.arange(2 * n) % n}, "GR", temperature=0.1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("strategy", GLOBAL_STRATEGIES)
def test_global_loss_matches_loop_on_paper_gd_batch(strategy):
    # 6 volumes x 4 partitions x 2 views = 48 embeddings
    g = torch.Generator().manual_seed(3)
    vol = torch.arange(6).repeat_interleave(4)
    part = torch.arange(4).repeat(6)
    position = (part + torch.rand(24, generator=g, dtype=torch.float64)) / 4
    meta = {
        "image": torch.arange(48) % 24,
        "volume": torch.cat([vol, vol]),
        "partition": torch.cat([part, part]),
        "position": torch.cat([position, position]),
    }
    z = torch.randn(48, 16, generator=g, dtype=torch.float64)
    got = global_loss(z, meta, strategy, temperature=0.1, threshold=0.1)
    pos, neg = global_masks(strategy, **meta, threshold=0.1)
    want = info_nce_loop_reference(z, pos, neg, 0.1, GLOBAL_REDUCTION[strategy])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_global_loss_accepts_a_batch():
    z = torch.randn(8, 5)
    batch = Batch(torch.zeros(8, 1, 4, 4), None, IMAGE, VOLUME, PARTITION, POSITION)
    for strategy in GLOBAL_STRATEGIES:
        from_batch = global_loss(z, batch, strategy)
        from_dict = global_loss(z, {"image": IMAGE, "volume": VOLUME, "partition": PARTITION, "position": POSITION},
                                strategy)
        torch.testing.assert_close(from_batch, from_dict)
        assert torch.isfinite(from_batch)


@pytest.mark.parametrize("strategy", GLOBAL_STRATEGIES)
def test_global_loss_gradients_are_finite(strategy):
    z = torch.randn(8, 5, requires_grad=True)
    meta = {"image": IMAGE, "volume": VOLUME, "partition": PARTITION, "position": POSITION}
    global_loss(z, meta, strategy).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


@cuda
@pytest.mark.parametrize("strategy", GLOBAL_STRATEGIES)
def test_global_loss_cuda_matches_cpu(strategy):
    z = torch.randn(8, 5)
    meta = {"image": IMAGE, "volume": VOLUME, "partition": PARTITION, "position": POSITION}
    cpu = global_loss(z, meta, strategy)
    gpu = global_loss(z.cuda(), meta, strategy)  # metadata moved to z's device
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# Local masks
# ---------------------------------------------------------------------------------------------------------------
# 2 slices (different volumes, same partition), 2 regions. Index = slice * 4 + view * 2 + region.
LR_POSITIVES = m("00100000 00010000 10000000 01000000 00000010 00000001 00001000 00000100")
LD_POSITIVES = m("00101010 00010101 10001010 01000101 10100010 01010001 10101000 01010100")
LOCAL_NEGATIVES = m("01010000 10100000 01010000 10100000 00000101 00001010 00000101 00001010")


@pytest.mark.parametrize("strategy,want", [("LR", LR_POSITIVES), ("LD", LD_POSITIVES)])
def test_local_masks_hand_written(strategy, want):
    pos, neg = local_masks(strategy, torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2, 2]), 2)
    off_diagonal = ~torch.eye(8, dtype=torch.bool)  # the kernel drops self pairs; the mask may keep them
    assert torch.equal(pos.to_dense() & off_diagonal, want), pos.to_dense().int()
    assert torch.equal(neg.to_dense(), LOCAL_NEGATIVES), neg.to_dense().int()


def test_ld_needs_other_volume_and_same_partition():
    pos, _ = local_masks("LD", torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]), 3)
    outer = pos.outer
    assert outer[0, 0] and not outer[0, 1]  # same volume, same partition, other slice: not positive
    assert not outer[0, 2]  # other partition


def test_sampled_negatives():
    r = 13
    _, neg = local_masks("LR", torch.arange(2), None, None, r, n_negatives=10)
    region_level = neg.inner[:r, :r]
    assert torch.equal(region_level.sum(1), torch.full((r,), 5))
    assert not region_level.diagonal().any()
    assert torch.equal(neg.inner, region_level.repeat(2, 2))  # the same regions in both views
    _, again = local_masks("LR", torch.arange(2), None, None, r, n_negatives=10)
    assert torch.equal(again.inner, neg.inner)  # fixed draw without a generator
    a = local_masks("LR", torch.arange(2), None, None, r, n_negatives=4, generator=torch.Generator().manual_seed(1))[1]
    b = local_masks("LR", torch.arange(2), None, None, r, n_negatives=4, generator=torch.Generator().manual_seed(1))[1]
    c = local_masks("LR", torch.arange(2), None, None, r, n_negatives=4, generator=torch.Generator().manual_seed(2))[1]
    assert torch.equal(a.inner, b.inner) and not torch.equal(a.inner, c.inner)


# ---------------------------------------------------------------------------------------------------------------
# Local losses against a loop written from the definitions
# ---------------------------------------------------------------------------------------------------------------
def local_reference(f1, f2, image, volume, partition, strategy, corners, k, pooling, neg_regions, temperature):
    views = (f1, f2)
    corners = corners.tolist()

    def vec(b, v, r):
        y, x = corners[r]
        patch = views[v][b, :, y : y + k, x : x + k]
        out = patch.reshape(-1) if pooling == "flatten" else patch.mean(dim=(1, 2))
        return out / out.norm()

    terms = []
    n_slices = f1.shape[0]
    for b in range(n_slices):
        for v in (0, 1):
            for r in range(len(corners)):
                anchor = vec(b, v, r)
                positives = [(b, 1 - v, r)]
                if strategy == "LD":
                    positives += [
                        (b2, v2, r)
                        for b2 in range(n_slices)
                        if partition[b2] == partition[b] and volume[b2] != volume[b]
                        for v2 in (0, 1)
                    ]
                negatives = [(b, v2, r2) for r2 in neg_regions[r] for v2 in (0, 1)]
                for p in positives:
                    s_p = anchor @ vec(*p) / temperature
                    denominator = torch.exp(s_p) + sum(torch.exp(anchor @ vec(*q) / temperature) for q in negatives)
                    terms.append(torch.log(denominator) - s_p)
    return torch.stack(terms).mean()


def local_case(seed=0, size=12, channels=3):
    g = torch.Generator().manual_seed(seed)
    # (volume, partition): two slices share partition 0 across volumes, one pair shares partition 1
    volume = torch.tensor([0, 0, 1, 1, 2])
    partition = torch.tensor([0, 1, 0, 1, 0])
    image = torch.tensor([10, 11, 12, 13, 14])
    f1 = torch.randn(5, channels, size, size, generator=g, dtype=torch.float64)
    f2 = f1 + 0.5 * torch.randn(5, channels, size, size, generator=g, dtype=torch.float64)
    return f1, f2, image, volume, partition


@pytest.mark.parametrize("strategy", ["LR", "LD"])
@pytest.mark.parametrize("pooling", ["flatten", "mean"])
def test_local_sparse_matches_loop(strategy, pooling):
    f1, f2, image, volume, partition = local_case(seed=1)
    k = 3
    got = local_loss(f1, f2, image, volume, partition, strategy, "sparse", k, pooling, temperature=0.1)
    corners = sparse_region_corners(12, 12, k)
    _, neg = local_masks(strategy, image, volume, partition, 13, n_negatives=10)
    neg_regions = [torch.nonzero(row).flatten().tolist() for row in neg.inner[:13, :13]]
    want = local_reference(f1, f2, image, volume, partition, strategy, corners, k, pooling, neg_regions, 0.1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("strategy", ["LR", "LD"])
@pytest.mark.parametrize("k,size,pooling", [(1, 5, "flatten"), (2, 6, "flatten"), (2, 7, "mean")])
def test_local_dense_matches_loop(strategy, k, size, pooling):
    f1, f2, image, volume, partition = local_case(seed=2, size=size)
    got = local_loss(f1, f2, image, volume, partition, strategy, "dense", k, pooling, temperature=0.2)
    corners = grid_region_corners(size, size, k)
    r = len(corners)
    neg_regions = [[r2 for r2 in range(r) if r2 != r1] for r1 in range(r)]
    want = local_reference(f1, f2, image, volume, partition, strategy, corners, k, pooling, neg_regions, 0.2)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("strategy", ["LR", "LD"])
def test_local_dense_chunked_equals_unchunked(strategy):
    f1, f2, image, volume, partition = local_case(seed=3, size=8)
    grads = []
    values = []
    # 8x8 maps, K = 1: n = 128 embeddings per slice. 10**9: one piece, weights kept; 1, 5, 31: row pieces,
    # recomputed in backward; 128: whole-block pieces, recomputed; 256: two blocks per piece, kept.
    for chunk in (10**9, 1, 5, 31, 128, 256, None):
        a, b = f1.clone().requires_grad_(True), f2.clone().requires_grad_(True)
        loss = local_loss(a, b, image, volume, partition, strategy, "dense", 1, chunk_size=chunk)
        loss.backward()
        values.append(loss.detach())
        grads.append(torch.cat([a.grad.flatten(), b.grad.flatten()]))
    for v, gr in zip(values[1:], grads[1:]):
        torch.testing.assert_close(v, values[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gr, grads[0], rtol=1e-9, atol=1e-12)


def test_local_dense_gradcheck():
    f1, f2, image, volume, partition = local_case(seed=4, size=4, channels=1)
    f1, f2, image, volume, partition = (t[[0, 2, 4]] for t in (f1, f2, image, volume, partition))  # LD pairs
    f1.requires_grad_(True)
    f2.requires_grad_(True)
    for chunk in (3, 8, None):  # row pieces (recomputed); one block per piece; one piece (weights kept)
        assert torch.autograd.gradcheck(
            lambda a, b: local_loss(a, b, image, volume, partition, "LD", "dense", 2, chunk_size=chunk), (f1, f2)
        )


def test_lr_is_the_mean_over_slices():
    # LR never looks across slices and each anchor has exactly one positive: the batch loss is the slice mean
    f1, f2, image, volume, partition = local_case(seed=5, size=6)
    whole = local_loss(f1, f2, image, volume, partition, "LR", "dense", 2)
    per_slice = [
        local_loss(f1[i : i + 1], f2[i : i + 1], image[i : i + 1], None, None, "LR", "dense", 2) for i in range(5)
    ]
    torch.testing.assert_close(whole, torch.stack(per_slice).mean())


def test_local_loss_autocast_bf16_cpu():
    f1, f2, image, volume, partition = local_case(seed=6, size=12, channels=8)
    conv = torch.nn.Conv2d(8, 8, 1).double()
    ref = local_loss(conv(f1).float(), conv(f2).float(), image, volume, partition, "LD", "dense", 1)
    conv = conv.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = conv(f1.float()), conv(f2.float())
        got = local_loss(a, b, image, volume, partition, "LD", "dense", 1)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    torch.testing.assert_close(got, ref, rtol=3e-2, atol=3e-2)


def test_local_region_corners():
    assert local_region_corners(48, 48, "sparse", 3).shape == (13, 2)
    assert local_region_corners(48, 48, "dense", 1).shape == (2304, 2)
    assert local_region_corners(48, 48, "dense", 3).shape == (256, 2)


def test_local_errors():
    f1, f2, image, volume, partition = local_case()
    with pytest.raises(ValueError, match="LR, LD"):
        local_loss(f1, f2, image, volume, partition, "LX")
    with pytest.raises(ValueError, match="sparse, dense"):
        local_loss(f1, f2, image, volume, partition, "LR", "grid")
    with pytest.raises(ValueError, match="same shape"):
        local_loss(f1, f2[:, :, :10], image, volume, partition)
    with pytest.raises(ValueError, match="entries"):
        local_loss(f1, f2, image[:3], volume, partition)
    with pytest.raises(ValueError, match="even"):
        local_loss(f1, f2, image, volume, partition, n_negatives=3)
    with pytest.raises(ValueError, match="other regions"):
        local_loss(f1, f2, image, volume, partition, n_negatives=40)
    with pytest.raises(ValueError, match="too small"):
        local_loss(f1[:, :, :6, :6], f2[:, :, :6, :6], image, volume, partition, form="sparse")
    with pytest.raises(ValueError, match="pooling"):
        local_loss(f1, f2, image, volume, partition, pooling="max")
    with pytest.raises(ValueError, match="partition"):
        local_loss(f1, f2, image, volume, -torch.ones(5, dtype=torch.long), "LD")
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        local_loss(f1[0], f2[0], image, volume, partition)


@cuda
@pytest.mark.parametrize("form", ["sparse", "dense"])
def test_local_loss_cuda_matches_cpu(form):
    f1, f2, image, volume, partition = local_case(seed=7, size=12)
    cpu = local_loss(f1.float(), f2.float(), image, volume, partition, "LD", form, 3)
    gpu = local_loss(f1.float().cuda(), f2.float().cuda(), image, volume, partition, "LD", form, 3, chunk_size=7)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


def test_paper_size_dense_runs_with_chunking():
    # a reduced version of the benchmark's memory case: must run through the chunked path and stay finite
    g = torch.Generator().manual_seed(8)
    f1 = torch.randn(4, 16, 24, 24, generator=g, requires_grad=True)
    f2 = torch.randn(4, 16, 24, 24, generator=g, requires_grad=True)
    meta = (torch.arange(4), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]))
    loss = local_loss(f1, f2, *meta, strategy="LD", form="dense", region_size=1, chunk_size=300)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f1.grad).all()
    assert math.isclose(
        loss.item(), local_loss(f1, f2, *meta, strategy="LD", form="dense", region_size=1, chunk_size=None).item(),
        rel_tol=1e-5,
    )
