"""Strategies as masks: hand-written expected matrices, PCL = SupCon, local losses against loops from definitions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glcl_core.batch import Batch
from glcl_core.contrastive.global_masks import GLOBAL_REDUCTION, GLOBAL_STRATEGIES, global_loss, global_masks
from glcl_core.contrastive.kernel import info_nce_loop_reference
from glcl_core.contrastive.local_masks import local_ld_pairs, local_loss, local_masks
from glcl_core.contrastive.local_negatives import resolve_local_negatives
from glcl_core.contrastive.regions import (
    OFFICIAL_SPARSE_NEGATIVES,
    SPARSE_EXTRA_LATTICE,
    SPARSE_LATTICE,
    grid_region_corners,
    local_region_corners,
    official_negative_regions,
    sparse_region_corners,
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


# ---------------------------------------------------------------------------------------------------------------
# PCL positions: float64 end to end, ties resolved as PCL's code resolves them
# ---------------------------------------------------------------------------------------------------------------
def _pcl_code_mask(z_of_row: list[int], k_of_row: list[int], threshold: float) -> torch.Tensor:
    """PCL's code, element by element: positions ``float(i + 1) / Z`` (Python float = float64), positive when
    ``abs(p_a - p_b) < threshold``, self excluded."""
    p = [float(k + 1) / z for k, z in zip(k_of_row, z_of_row)]
    n = len(p)
    return torch.tensor([[a != b and abs(p[a] - p[b]) < threshold for b in range(n)] for a in range(n)])


def _exact_mask(z_of_row, k_of_row, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact rational arithmetic: the mask ``|(k_a + 1)/Z_a - (k_b + 1)/Z_b| < threshold`` (threshold as the
    decimal it is written as) and the tie pairs where the difference equals it exactly."""
    from fractions import Fraction

    t = Fraction(str(threshold))
    p = [Fraction(k + 1, z) for k, z in zip(k_of_row, z_of_row)]
    n = len(p)
    less = torch.tensor([[a != b and abs(p[a] - p[b]) < t for b in range(n)] for a in range(n)])
    tie = torch.tensor([[abs(p[a] - p[b]) == t for b in range(n)] for a in range(n)])
    return less, tie


@pytest.mark.parametrize("sizes, threshold", [((20,), 0.1), ((40,), 0.1), ((20,), 0.35), ((20, 40), 0.1)])
def test_pcl_ties_resolve_as_in_pcl_code(sizes, threshold):
    """Volumes of Z slices with threshold x Z an integer: the sampler's float64 positions give PCL's float64 mask
    bit for bit; float32 positions (the former storage) give a different one."""
    from glcl_core.data.volume import Volume
    from glcl_core.samplers import RandomSliceSampler

    vols = [Volume(f"v{z}", np.zeros((z, 4, 4), np.float32), None, (1.0, 1.0, 1.0)) for z in sizes]
    assert all(v.positions.dtype == np.float64 for v in vols)
    sampler = RandomSliceSampler(vols, batch_size=sum(sizes), seed=0)
    batch = sampler.sample()
    assert batch.position.dtype == torch.float64
    offsets = sampler.offsets[batch.volume]
    z_of_row = [sizes[v] for v in batch.volume.tolist()]
    k_of_row = (batch.image - offsets).tolist()
    # the stored positions are the doubles PCL's code computes
    assert batch.position.tolist() == [float(k + 1) / z for k, z in zip(k_of_row, z_of_row)]

    pos, _ = global_masks("PCL", None, None, None, batch.position, threshold=threshold)
    want = _pcl_code_mask(z_of_row, k_of_row, threshold)
    assert torch.equal(pos, want)

    # float32 positions, as stored before: the same comparison in float64 flips some tie pairs
    p32 = ((batch.image - offsets).to(torch.float32) + 1) / torch.tensor(z_of_row, dtype=torch.float32)
    pos32, _ = global_masks("PCL", None, None, None, p32, threshold=threshold)
    assert not torch.equal(pos32, want)

    # exact rationals: equal to PCL's float64 mask away from the ties; on a tie (|p_a - p_b| == threshold) the
    # exact answer is "not positive", while float64 rounding decides it in PCL's code (and here)
    exact, tie = _exact_mask(z_of_row, k_of_row, threshold)
    assert tie.any()
    assert torch.equal(pos[~tie], exact[~tie])
    if threshold == 0.35:  # 7/20: every tie rounds to "not positive" in float64 too
        assert torch.equal(pos, exact)
    else:  # 0.1: float64 rounding makes some ties positive where exact arithmetic would not
        assert (pos & tie).any()


def test_pcl_mask_keeps_positions_float64_on_its_device():
    position = torch.tensor([0.05, 0.15, 0.25], dtype=torch.float64)
    image = torch.arange(3)
    pos, neg = global_masks("PCL", image, None, None, position, threshold=0.1)
    assert pos.device == image.device and pos.dtype == torch.bool
    # 0.15 - 0.05 and 0.25 - 0.15 in float64 (both would be exactly 0.1 in rationals)
    assert pos[0, 1].item() == (abs(0.15 - 0.05) < 0.1) and pos[1, 2].item() == (abs(0.25 - 0.15) < 0.1)


# ---------------------------------------------------------------------------------------------------------------
# GD pairing: the paper's "all other volumes" and the official code's ring of neighbours
# ---------------------------------------------------------------------------------------------------------------
def _partition_batch_meta(volume_ids: list[int], n_partitions: int) -> dict[str, torch.Tensor]:
    """Metadata of a partition batch as the sampler and make_views lay it out: rows ``v * (m S) + j * S + s`` =
    view ``v``, ``j``-th drawn volume, partition ``s``."""
    m, s = len(volume_ids), n_partitions
    vol = torch.tensor(volume_ids).repeat_interleave(s)
    part = torch.arange(s).repeat(m)
    image = torch.tensor(volume_ids).repeat_interleave(s) * 100 + part  # a distinct id per slice
    return {"image": torch.cat([image, image]), "volume": torch.cat([vol, vol]),
            "partition": torch.cat([part, part]), "position": None}


def _official_gd_pairs(n_blocks: int, s: int) -> tuple[list[tuple[int, int]], dict[int, set[int]]]:
    """The directed positive pairs (with repeats) and the negatives of GLCL's code for ``global_loss_exp_no = 2``
    (its models.py), on its stitched layout without the all-zero blocks: slot ``k * 2S + v * S + p`` is block
    ``k`` (one volume), view ``v`` (0 original, 1 augmented), partition ``p``. Written from the facts: anchors are
    the slots with ``i % 2S < S``; with ``i2, i3, i4 = i + S, i + 2S, i + 3S`` (mod the batch) the loss adds
    (i1, i2), (i1, i3), (i3, i4), (i2, i4) in both directions; negatives: every slot of another partition."""
    bs = 2 * s * n_blocks
    pairs = []
    for i1 in range(bs):
        if i1 % (2 * s) >= s:
            continue
        i2, i3, i4 = (i1 + s) % bs, (i1 + 2 * s) % bs, (i1 + 3 * s) % bs
        for a, b in ((i1, i2), (i1, i3), (i3, i4), (i2, i4)):
            pairs += [(a, b), (b, a)]
    negatives = {i: {j for j in range(bs) if j % s != i % s} for i in range(bs)}
    return pairs, negatives


@pytest.mark.parametrize("n_volumes", [2, 3, 4, 6])
def test_gd_neighbour_pairing_is_the_official_ring(n_volumes):
    s = 4
    meta = _partition_batch_meta([7, 2, 9, 4, 11, 5][:n_volumes], s)  # ids out of order: slots follow the batch
    pos, neg = global_masks("GD", **meta, pairing="neighbour")
    pairs, negatives = _official_gd_pairs(n_volumes, s)

    def row(slot: int) -> int:  # official slot -> our row
        k, v, p = slot // (2 * s), (slot % (2 * s)) // s, slot % s
        return v * n_volumes * s + k * s + p

    want = torch.zeros_like(pos)
    for a, b in pairs:
        want[row(a), row(b)] = True
    assert torch.equal(pos, want)
    want_neg = torch.zeros_like(neg)
    for a, others in negatives.items():
        for b in others:
            want_neg[row(a), row(b)] = True
    assert torch.equal(neg, want_neg)
    # the official code counts each same-slice pair twice and each cross-volume pair once: same-slice share 1/2
    same_slice = sum(1 for a, b in pairs if a // (2 * s) == b // (2 * s))
    assert same_slice / len(pairs) == pytest.approx(0.5)


@pytest.mark.parametrize("n_volumes", [2, 3, 4, 6])
def test_gd_pairing_counts_and_same_slice_share(n_volumes):
    """Per anchor: 1 same-slice positive, 2(m - 1) cross-volume ones with "all", min(2, m - 1) with "neighbour";
    under the pairs reduction the same-slice term carries 1 / (1 + c) of the loss."""
    meta = _partition_batch_meta(list(range(10, 10 + n_volumes)), 4)
    same_image = (meta["image"][:, None] == meta["image"][None, :]) & ~torch.eye(len(meta["image"]), dtype=torch.bool)
    for pairing, cross in (("all", 2 * (n_volumes - 1)), ("neighbour", min(2, n_volumes - 1))):
        pos, _ = global_masks("GD", **meta, pairing=pairing)
        assert (pos & same_image).sum(1).eq(1).all()
        assert (pos & ~same_image).sum(1).eq(cross).all()
        share = (pos & same_image).sum().item() / pos.sum().item()
        assert share == pytest.approx(1 / (1 + cross))
    if n_volumes >= 3:
        assert 1 / (1 + 2 * (n_volumes - 1)) == pytest.approx(1 / (2 * n_volumes - 1))


def test_gd_neighbour_pairing_is_the_same_for_a_gathered_batch():
    """Under torchrun the gathered batch is rank-major (rank 0's views 1 and 2, then rank 1's): volume slots and
    views read from the metadata are unchanged, so the masks are those of the single-process batch, permuted."""
    s, ids = 2, [3, 8, 1, 6]
    single = _partition_batch_meta(ids, s)
    n = len(ids) * s
    # rank 0 holds volumes 0-1, rank 1 volumes 2-3: rows [r0 view 1, r0 view 2, r1 view 1, r1 view 2]
    half = n // 2
    order = torch.cat([torch.arange(0, half), torch.arange(n, n + half),
                       torch.arange(half, n), torch.arange(n + half, 2 * n)])
    gathered = {k: (None if v is None else v[order]) for k, v in single.items()}
    pos1, neg1 = global_masks("GD", **single, pairing="neighbour")
    pos2, neg2 = global_masks("GD", **gathered, pairing="neighbour")
    assert torch.equal(pos2, pos1[order][:, order]) and torch.equal(neg2, neg1[order][:, order])


def test_gd_pairing_loss_and_errors():
    meta = _partition_batch_meta([0, 1, 2, 3], 2)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(16, 8, generator=g, dtype=torch.float64)
    for pairing in ("all", "neighbour"):
        pos, neg = global_masks("GD", **meta, pairing=pairing)
        got = global_loss(z, meta, "GD", pairing=pairing)
        torch.testing.assert_close(got, info_nce_loop_reference(z, pos, neg, 0.1, "pairs"), rtol=1e-10, atol=1e-10)
    assert not torch.equal(global_loss(z, meta, "GD", pairing="all"), global_loss(z, meta, "GD", pairing="neighbour"))
    # only GD reads it
    assert torch.equal(global_masks("GD-", **meta, pairing="neighbour")[0], global_masks("GD-", **meta)[0])
    with pytest.raises(ValueError, match="all, neighbour"):
        global_masks("GD", **meta, pairing="ring")


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
def local_reference(f1, f2, image, volume, partition, strategy, corners, k, pooling, neg_regions, temperature,
                    project=None):
    """Symmetric form (anchors in both views, per-anchor negatives); anchors are the regions with a row in
    ``neg_regions`` (other corners are negative-only); ``project`` maps a pooled region vector."""
    views = (f1, f2)
    corners = corners.tolist()

    def vec(b, v, r):
        y, x = corners[r]
        patch = views[v][b, :, y : y + k, x : x + k]
        out = patch.reshape(-1) if pooling == "flatten" else patch.mean(dim=(1, 2))
        if project is not None:
            out = project(out)
        return out / out.norm()

    terms = []
    n_slices = f1.shape[0]
    for b in range(n_slices):
        for v in (0, 1):
            for r in range(len(neg_regions)):
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
    # the random draw (an option) in the symmetric form; the official defaults are tested below
    got = local_loss(f1, f2, image, volume, partition, strategy, "sparse", k, pooling, n_negatives=10,
                     temperature=0.1, ld_pairs="symmetric")
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


# ---------------------------------------------------------------------------------------------------------------
# Official local loss: the hand-picked negatives, L^R exactly, L^D with per-pair negatives
# ---------------------------------------------------------------------------------------------------------------
EXTRA_POSITIONS = {(1, 2), (2, 1), (2, 3), (3, 2)}


def test_official_negative_table():
    table = official_negative_regions()
    assert table.shape == (13, 5) and len(OFFICIAL_SPARSE_NEGATIVES) == 13
    assert all(len(row) == 5 for row in OFFICIAL_SPARSE_NEGATIVES)
    lattice = SPARSE_LATTICE + SPARSE_EXTRA_LATTICE
    assert len(set(lattice)) == 17
    for r, row in enumerate(OFFICIAL_SPARSE_NEGATIVES):
        assert [lattice[i] for i in table[r].tolist()] == list(row)  # indices follow the official order
        assert r not in table[r].tolist() and len(set(row)) == 5  # never the region itself, no repeats
    used = {pos for row in OFFICIAL_SPARSE_NEGATIVES for pos in row}
    assert used - set(SPARSE_LATTICE) == EXTRA_POSITIONS == set(SPARSE_EXTRA_LATTICE)
    assert set(table.flatten().tolist()) >= {13, 14, 15, 16}
    # a few rows spelled out (region r0, r6, r12 of the official code)
    assert OFFICIAL_SPARSE_NEGATIVES[0] == ((0, 2), (1, 1), (1, 2), (2, 0), (2, 1))
    assert OFFICIAL_SPARSE_NEGATIVES[6] == ((2, 0), (2, 1), (4, 2), (3, 1), (3, 2))
    assert OFFICIAL_SPARSE_NEGATIVES[12] == ((2, 2), (2, 4), (4, 2), (4, 4), (3, 1))
    # the 1x1 table: only the 13 regions
    one = official_negative_regions(1)
    assert one.shape == (13, 5) and int(one.max()) < 13
    assert all(r not in one[r].tolist() for r in range(13))


def test_official_corners_on_a_48_map():
    corners = sparse_region_corners(48, 48, 3, extras=True)
    assert corners.shape == (17, 2)
    assert torch.equal(corners[:13], sparse_region_corners(48, 48, 3))
    assert torch.equal(corners[:13], torch.tensor(SPARSE_LATTICE) * 11)  # q = 11 on 48x48 with K = 3
    assert corners[13:].tolist() == [[11, 22], [22, 11], [22, 33], [33, 22]]
    assert torch.equal(local_region_corners(48, 48, "sparse", 3, extras=True), corners)
    # the corners of region 0's official negatives
    assert corners[official_negative_regions()[0]].tolist() == [[0, 22], [11, 11], [11, 22], [22, 0], [22, 11]]
    with pytest.raises(ValueError, match="sparse"):
        local_region_corners(48, 48, "dense", 3, extras=True)


@pytest.mark.parametrize("strategy,per_view", [("LR", 5), ("LD", 4)])
def test_official_masks(strategy, per_view):
    image, volume, partition = torch.arange(4), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    pos, neg = local_masks(strategy, image, volume, partition, 13, negatives="official")
    assert pos.inner.shape == (34, 34) and neg.inner.shape == (34, 34)  # 2 views x (13 + 4 extra)
    q = torch.arange(34)
    region, view = q % 17, q // 17
    anchors = region < 13
    # every anchor region: 5 (LR) or 4 (LD, official cut) listed regions in each view of its own image
    assert torch.equal(neg.inner[anchors].sum(1), torch.full((26,), 2 * per_view))
    for v in (0, 1):
        assert torch.equal(neg.inner[anchors][:, view == v].sum(1), torch.full((26,), per_view))
    assert not (neg.inner & (region[:, None] == region[None, :])).any()  # never itself, in either view
    assert torch.equal(neg.outer, image[:, None] == image[None, :])  # negatives from the own image only
    # extra positions: negatives of some anchors, never anchors with a positive, never anyone's positive
    assert not pos.inner[~anchors].any() and not pos.inner[:, ~anchors].any()
    assert not neg.inner[~anchors].any()
    assert neg.inner[:, ~anchors].any(0).sum() == (8 if strategy == "LR" else 6)  # (3,2) is always 5th in a row
    d_pos = pos.to_dense() & ~torch.eye(4 * 34, dtype=torch.bool)
    has_positive = d_pos.any(1).reshape(4, 34)
    assert torch.equal(has_positive, anchors.expand(4, 34))


def official_ld_reference(f1, f2, volume, partition, k, pooling, temperature, n_neg=4, project=None):
    """The official L^D written as its loops: for every slice a (view 1) and region r, three kinds of pairs with
    their own negatives (the listed regions of the pair's two maps)."""
    corners = sparse_region_corners(f1.shape[-2], f1.shape[-1], k, extras=True).tolist()
    table = [[SPARSE_LATTICE.index(p) if p in SPARSE_LATTICE else 13 + SPARSE_EXTRA_LATTICE.index(p)
              for p in row[:n_neg]] for row in OFFICIAL_SPARSE_NEGATIVES]
    views = (f1, f2)

    def vec(b, v, r):
        y, x = corners[r]
        patch = views[v][b, :, y : y + k, x : x + k]
        out = patch.reshape(-1) if pooling == "flatten" else patch.mean(dim=(1, 2))
        if project is not None:
            out = project(out)
        return out / out.norm()

    def term(anchor, key, negatives):
        s_p = anchor @ key / temperature
        return torch.log(torch.exp(s_p) + sum(torch.exp(anchor @ n / temperature) for n in negatives)) - s_p

    terms = []
    n = f1.shape[0]
    for a in range(n):
        partners = [b for b in range(n) if partition[b] == partition[a] and volume[b] != volume[a]]
        for r in range(13):
            anchor = vec(a, 0, r)
            own = [vec(a, 0, j) for j in table[r]]
            terms.append(term(anchor, vec(a, 1, r), own + [vec(a, 1, j) for j in table[r]]))
            for b in partners:
                terms.append(term(anchor, vec(b, 0, r), own + [vec(b, 0, j) for j in table[r]]))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("pooling", ["flatten", "mean"])
def test_official_lr_matches_loop(pooling):
    f1, f2, image, volume, partition = local_case(seed=3)
    got = local_loss(f1, f2, image, volume, partition, "LR", "sparse", 3, pooling, temperature=0.1)
    corners = sparse_region_corners(12, 12, 3, extras=True)
    neg_regions = official_negative_regions().tolist()
    want = local_reference(f1, f2, image, volume, partition, "LR", corners, 3, pooling, neg_regions, 0.1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # the random draw is no longer the default, and gives another loss
    other = local_loss(f1, f2, image, volume, partition, "LR", "sparse", 3, pooling, negatives="random")
    assert abs(float(other) - float(got)) > 1e-3


@pytest.mark.parametrize("pooling", ["flatten", "mean"])
@pytest.mark.parametrize("n_neg", [4, 5])
def test_official_ld_matches_loop(pooling, n_neg):
    f1, f2, image, volume, partition = local_case(seed=4)
    got = local_loss(f1, f2, image, volume, partition, "LD", "sparse", 3, pooling, temperature=0.1,
                     ld_negative_regions=n_neg)
    want = official_ld_reference(f1, f2, volume, partition, 3, pooling, 0.1, n_neg=n_neg)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    symmetric = local_loss(f1, f2, image, volume, partition, "LD", "sparse", 3, pooling, temperature=0.1,
                           ld_pairs="symmetric", ld_negative_regions=n_neg)
    assert abs(float(symmetric) - float(got)) > 1e-3


def test_official_losses_with_a_projection_match_loops():
    f1, f2, image, volume, partition = local_case(seed=5, channels=2)
    proj = torch.nn.Linear(2 * 9, 7, bias=False).double()
    neg_regions = official_negative_regions().tolist()
    corners = sparse_region_corners(12, 12, 3, extras=True)
    got = local_loss(f1, f2, image, volume, partition, "LR", region_projection=proj)
    want = local_reference(f1, f2, image, volume, partition, "LR", corners, 3, "flatten", neg_regions, 0.1,
                           project=proj)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    got = local_loss(f1, f2, image, volume, partition, "LD", region_projection=proj)
    torch.testing.assert_close(got, official_ld_reference(f1, f2, volume, partition, 3, "flatten", 0.1, project=proj),
                               rtol=1e-10, atol=1e-10)
    got.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="region_projection"):
        local_loss(f1, f2, image, volume, partition, "LR", region_projection=lambda x: x[0])


def test_official_ld_pairs_structure():
    image, volume, partition = torch.arange(6), torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 0, 1])
    table = official_negative_regions()[:, :4]
    anchor, key, negatives = local_ld_pairs(image, volume, partition, table, 17)
    # 6 slices x 13 regions x (1 own view 2 + 2 partners)
    assert anchor.shape == key.shape == (6 * 13 * 3,) and negatives.shape == (6 * 13 * 3, 8)
    a_slice, a_view, a_region = anchor // 34, (anchor // 17) % 2, anchor % 17
    k_slice, k_view, k_region = key // 34, (key // 17) % 2, key % 17
    assert (a_view == 0).all()  # anchors in view 1 only
    assert (a_region < 13).all() and torch.equal(k_region, a_region)  # extras never anchors or positives
    own = k_slice == a_slice
    assert (k_view[own] == 1).all() and (k_view[~own] == 0).all()  # own view 2, partners' view 1
    assert (partition[k_slice] == partition[a_slice]).all() and (volume[k_slice[~own]] != volume[a_slice[~own]]).all()
    n_slice, n_view, n_region = negatives // 34, (negatives // 17) % 2, negatives % 17
    assert torch.equal(n_region, table[a_region].repeat(1, 2))  # the anchor region's listed regions, twice
    assert (n_slice[:, :4] == a_slice[:, None]).all() and (n_view[:, :4] == 0).all()  # anchor's image, view 1
    assert (n_slice[:, 4:] == k_slice[:, None]).all() and torch.equal(n_view[:, 4:], k_view[:, None].expand(-1, 4))
    assert not ((negatives == anchor[:, None]) | (negatives == key[:, None])).any()


def test_local_negatives_options_and_errors():
    f1, f2, image, volume, partition = local_case(seed=6)
    assert resolve_local_negatives("sparse") == "official" and resolve_local_negatives("dense") == "all"
    assert resolve_local_negatives("sparse", None, 4) == resolve_local_negatives("dense", None, 4) == "random"
    base = float(local_loss(f1, f2, image, volume, partition))
    assert float(local_loss(f1, f2, image, volume, partition, negatives="official")) == base
    # random: the old draw, identical to passing n_negatives=10
    a = local_loss(f1, f2, image, volume, partition, negatives="random")
    b = local_loss(f1, f2, image, volume, partition, n_negatives=10)
    assert float(a) == float(b) != base
    every = local_loss(f1, f2, image, volume, partition, negatives="all")
    assert torch.isfinite(every) and float(every) > base  # 24 negatives instead of 10
    with pytest.raises(ValueError, match="sparse form only"):
        local_loss(f1, f2, image, volume, partition, form="dense", negatives="official")
    with pytest.raises(ValueError, match="only applies"):
        local_loss(f1, f2, image, volume, partition, negatives="official", n_negatives=10)
    with pytest.raises(ValueError, match="negatives"):
        local_loss(f1, f2, image, volume, partition, negatives="hand")
    with pytest.raises(ValueError, match="ld_pairs"):
        local_loss(f1, f2, image, volume, partition, "LD", ld_pairs="both")
    with pytest.raises(ValueError, match="ld_negative_regions"):
        local_loss(f1, f2, image, volume, partition, "LD", ld_negative_regions=6)
    with pytest.raises(ValueError, match="13 sparse regions"):
        local_masks("LR", image, None, None, 16, negatives="official")
    # dense LD: always the symmetric form
    d = local_loss(f1, f2, image, volume, partition, "LD", "dense", 3)
    assert float(d) == float(local_loss(f1, f2, image, volume, partition, "LD", "dense", 3, ld_pairs="symmetric"))


def test_official_ld_with_constant_features_is_chance():
    f = torch.ones(6, 3, 12, 12, dtype=torch.float64)
    image, volume, partition = torch.arange(6), torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 0, 1])
    loss = local_loss(f, f.clone(), image, volume, partition, "LD")
    assert float(loss) == pytest.approx(math.log(1 + 8))  # 4 listed regions x 2 maps per pair
    assert float(local_loss(f, f.clone(), image, volume, partition, "LR")) == pytest.approx(math.log(11))


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
