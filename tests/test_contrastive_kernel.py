"""The contrastive kernel: masked_info_nce against a per-pair loop, closed forms, gradients, errors, precision."""
from __future__ import annotations

import math

import pytest
import torch

from glcl_core.contrastive.kernel import BlockMask, info_nce_loop_reference, masked_info_nce, pair_info_nce
from glcl_core.contrastive.regions import grid_region_corners, pool_regions, sparse_region_corners

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def random_case(n, d, p_pos=0.3, p_neg=0.6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=dtype)
    positives = torch.rand(n, n, generator=g) < p_pos
    negatives = torch.rand(n, n, generator=g) < p_neg  # overlaps positives on purpose
    positives[0, 1] = True  # at least one pair
    return z, positives, negatives


# ---------------------------------------------------------------------------------------------------------------
# Against the loop reference
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,d", [(2, 3), (7, 4), (16, 8), (33, 5)])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0])
@pytest.mark.parametrize("reduction", ["pairs", "anchors"])
def test_matches_loop_reference(n, d, temperature, reduction):
    for seed in range(3):
        z, pos, neg = random_case(n, d, seed=seed)
        got = masked_info_nce(z, pos, neg, temperature, reduction)
        want = info_nce_loop_reference(z, pos, neg, temperature, reduction)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reduction", ["pairs", "anchors"])
def test_float32_matches_float64_reference(reduction):
    z, pos, neg = random_case(24, 16, seed=3)
    got = masked_info_nce(z.float(), pos, neg, 0.1, reduction)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), info_nce_loop_reference(z, pos, neg, 0.1, reduction), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 100])
@pytest.mark.parametrize("reduction", ["pairs", "anchors"])
def test_row_chunking_is_exact(chunk_size, reduction):
    z, pos, neg = random_case(13, 6, seed=1)
    z.requires_grad_(True)
    full = masked_info_nce(z, pos, neg, 0.1, reduction)
    (g_full,) = torch.autograd.grad(full, z)
    chunked = masked_info_nce(z, pos, neg, 0.1, reduction, chunk_size=chunk_size)
    (g_chunked,) = torch.autograd.grad(chunked, z)
    torch.testing.assert_close(chunked, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_chunked, g_full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [None, 1, 4, 9, 1000])
@pytest.mark.parametrize("reduction", ["pairs", "anchors"])
def test_block_masks_equal_their_dense_form(chunk_size, reduction):
    g = torch.Generator().manual_seed(5)
    blocks, n, d = 4, 6, 5
    z = torch.randn(blocks, n, d, generator=g, dtype=torch.float64)
    pos = BlockMask(torch.rand(blocks, blocks, generator=g) < 0.5, torch.rand(n, n, generator=g) < 0.4)
    neg = BlockMask(torch.rand(blocks, blocks, generator=g) < 0.6, torch.rand(n, n, generator=g) < 0.6)
    pos.outer[0, 0] = pos.inner[0, 1] = True
    got = masked_info_nce(z, pos, neg, 0.1, reduction, chunk_size=chunk_size)
    want = info_nce_loop_reference(z.reshape(-1, d), pos.to_dense(), neg.to_dense(), 0.1, reduction)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_block_mask_dense_layout():
    outer = torch.tensor([[True, False], [True, True]])
    inner = torch.tensor([[False, True], [True, True]])
    want = torch.tensor(
        [
            [0, 1, 0, 0],
            [1, 1, 0, 0],
            [0, 1, 0, 1],
            [1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(BlockMask(outer, inner).to_dense(), want)


# ---------------------------------------------------------------------------------------------------------------
# Closed forms and invariances
# ---------------------------------------------------------------------------------------------------------------
def test_equal_similarities_give_log_one_plus_negatives():
    n = 10
    z = torch.ones(n, 4)  # every cosine similarity is 1
    others = ~torch.eye(n, dtype=torch.bool)
    pairs = torch.zeros(n, n, dtype=torch.bool)
    pairs[torch.arange(n), (torch.arange(n) + n // 2) % n] = True
    # SimCLR-like: the denominator is every other embedding, the positive counted once -> n - 2 negatives
    torch.testing.assert_close(masked_info_nce(z, pairs, others, 0.1), torch.tensor(math.log(1 + n - 2)))
    # positive excluded from the negatives: also n - 2 negatives
    torch.testing.assert_close(masked_info_nce(z, pairs, others & ~pairs, 0.1), torch.tensor(math.log(n - 1)))
    # three negatives per anchor, mean over pairs
    neg3 = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        neg3[i, [(i + 1) % n, (i + 2) % n, (i + 3) % n]] = True
    torch.testing.assert_close(masked_info_nce(z, pairs, neg3 & ~pairs, 1.0), torch.tensor(math.log(4.0)))
    # no negatives at all: every term is -log(1) = 0
    none = torch.zeros(n, n, dtype=torch.bool)
    torch.testing.assert_close(masked_info_nce(z, pairs, none, 0.1), torch.tensor(0.0))


def test_unequal_counts_of_negatives_pairs_form():
    z = torch.ones(4, 3)
    pos = torch.zeros(4, 4, dtype=torch.bool)
    pos[0, 1] = pos[2, 3] = True
    neg = torch.zeros(4, 4, dtype=torch.bool)
    neg[0, [2, 3]] = True  # 2 negatives for (0, 1)
    neg[2, [0, 1, 3]] = True  # 3 keys but 3 is the positive: 2 + positive counted once -> 2 negatives
    torch.testing.assert_close(masked_info_nce(z, pos, neg, 0.5), torch.tensor(math.log(3.0)))


def test_positive_in_negatives_is_counted_once():
    z, pos, _ = random_case(9, 4, seed=2)
    others = ~torch.eye(9, dtype=torch.bool)
    # with every other embedding negative, the denominator of each pair is the same with or without p in the mask
    torch.testing.assert_close(masked_info_nce(z, pos, others, 0.2), masked_info_nce(z, pos, others | pos, 0.2))
    ref = info_nce_loop_reference(z, pos, others, 0.2)
    torch.testing.assert_close(masked_info_nce(z, pos, others, 0.2), ref)


@pytest.mark.parametrize("reduction", ["pairs", "anchors"])
def test_permutation_equivariance(reduction):
    z, pos, neg = random_case(15, 6, seed=4)
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(0))
    a = masked_info_nce(z, pos, neg, 0.1, reduction)
    b = masked_info_nce(z[perm], pos[perm][:, perm], neg[perm][:, perm], 0.1, reduction)
    torch.testing.assert_close(a, b)


def test_scale_invariance_of_embeddings():
    z, pos, neg = random_case(8, 5, seed=6)
    scale = torch.rand(8, 1, dtype=torch.float64) * 10 + 0.1
    torch.testing.assert_close(masked_info_nce(z, pos, neg, 0.1), masked_info_nce(z * scale, pos, neg, 0.1))


def test_diagonal_of_masks_is_ignored():
    z, pos, neg = random_case(8, 5, seed=7)
    eye = torch.eye(8, dtype=torch.bool)
    with_diagonal = masked_info_nce(z, pos | eye, neg | eye, 0.1)
    torch.testing.assert_close(with_diagonal, masked_info_nce(z, pos & ~eye, neg & ~eye, 0.1))


def test_anchors_without_positives_are_skipped():
    z, pos, neg = random_case(10, 4, seed=8)
    pos[3] = False
    pos[7] = False
    anchors = [i for i in range(10) if (pos[i] & ~torch.eye(10, dtype=torch.bool)[i]).any()]
    per_anchor = []
    for i in anchors:
        only_i = torch.zeros_like(pos)
        only_i[i] = pos[i]
        per_anchor.append(masked_info_nce(z, only_i, neg, 0.1, "pairs"))
    torch.testing.assert_close(masked_info_nce(z, pos, neg, 0.1, "anchors"), torch.stack(per_anchor).mean())
    # an anchor without positives still serves as a negative of the others, but adds no term
    assert torch.isfinite(masked_info_nce(z, pos, neg, 0.1, "pairs"))


def test_reductions_differ_with_uneven_positive_counts():
    z, _, neg = random_case(6, 4, seed=9)
    pos = torch.zeros(6, 6, dtype=torch.bool)
    pos[0, 1] = True
    pos[2, [3, 4, 5]] = True
    pairs = masked_info_nce(z, pos, neg, 0.1, "pairs")
    anchors = masked_info_nce(z, pos, neg, 0.1, "anchors")
    assert not torch.allclose(pairs, anchors)
    torch.testing.assert_close(anchors, info_nce_loop_reference(z, pos, neg, 0.1, "anchors"))


def test_large_logits_are_stable():
    z, pos, neg = random_case(20, 8, seed=10)
    got = masked_info_nce(z.float(), pos, neg, 0.005)  # logits up to 200: exp would overflow float32
    assert torch.isfinite(got)
    torch.testing.assert_close(got.double(), masked_info_nce(z, pos, neg, 0.005), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_block_kernel_small_temperature(chunk_size):
    # t = 0.01: exp(-2/t) underflows float32, so the block kernel must fall back to a per-row max shift
    g = torch.Generator().manual_seed(17)
    z = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    pos = BlockMask(torch.ones(3, 3, dtype=torch.bool), torch.eye(5, dtype=torch.bool).roll(1, 1))
    neg = BlockMask(torch.eye(3, dtype=torch.bool), torch.rand(5, 5, generator=g) < 0.7)
    want = info_nce_loop_reference(z.reshape(-1, 4), pos.to_dense(), neg.to_dense(), 0.01)
    got = masked_info_nce(z.float(), pos, neg, 0.01, chunk_size=chunk_size)
    assert torch.isfinite(got)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-3)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: masked_info_nce(x, pos, neg, 0.002, chunk_size=chunk_size), (z,))


# ---------------------------------------------------------------------------------------------------------------
# Gradients and optimisation
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["pairs", "anchors"])
def test_gradcheck_dense(reduction):
    z, pos, neg = random_case(7, 3, seed=11)
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: masked_info_nce(x, pos, neg, 0.3, reduction), (z,))
    assert torch.autograd.gradcheck(lambda x: masked_info_nce(x, pos, neg, 0.3, reduction, chunk_size=2), (z,))


def test_gradcheck_blocks_with_empty_negative_rows():
    g = torch.Generator().manual_seed(12)
    z = torch.randn(3, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    inner_pos = torch.eye(4, dtype=torch.bool) | (torch.rand(4, 4, generator=g) < 0.3)
    pos = BlockMask(torch.ones(3, 3, dtype=torch.bool), inner_pos)
    inner_neg = torch.rand(4, 4, generator=g) < 0.5
    inner_neg[1] = False  # anchors at q = 1 have no negatives
    neg = BlockMask(torch.eye(3, dtype=torch.bool), inner_neg)
    for chunk in (None, 1, 3):
        assert torch.autograd.gradcheck(lambda x: masked_info_nce(x, pos, neg, 0.2, "pairs", chunk_size=chunk), (z,))
    grad = torch.autograd.grad(masked_info_nce(z, pos, neg, 0.2), z)[0]
    assert torch.isfinite(grad).all()


def test_loss_falls_on_a_toy_problem():
    torch.manual_seed(0)
    n = 16
    image = torch.arange(n) % (n // 2)  # two views of 8 images
    pos = (image[:, None] == image[None, :]) & ~torch.eye(n, dtype=torch.bool)
    neg = ~torch.eye(n, dtype=torch.bool)
    z = torch.nn.Parameter(torch.randn(n, 8))
    opt = torch.optim.Adam([z], lr=0.05)
    losses = []
    for _ in range(30):
        loss = masked_info_nce(z, pos, neg, 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(math.isfinite(v) for v in losses)


# ---------------------------------------------------------------------------------------------------------------
# Mixed precision and devices
# ---------------------------------------------------------------------------------------------------------------
def test_autocast_bf16_cpu_is_finite_and_close_to_fp32():
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 16)
    x = torch.randn(24, 32)
    image = torch.arange(24) % 12
    pos = (image[:, None] == image[None, :]) & ~torch.eye(24, dtype=torch.bool)
    neg = ~torch.eye(24, dtype=torch.bool)
    ref = masked_info_nce(layer(x), pos, neg, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layer(x)
        assert z.dtype == torch.bfloat16
        got = masked_info_nce(z, pos, neg, 0.1)
    assert got.dtype == torch.float32 and torch.isfinite(got)
    torch.testing.assert_close(got, ref, rtol=3e-2, atol=3e-2)
    got.backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_half_precision_input_without_autocast():
    z, pos, neg = random_case(12, 8, seed=13)
    got = masked_info_nce(z.to(torch.bfloat16), pos, neg, 0.1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), masked_info_nce(z, pos, neg, 0.1), rtol=3e-2, atol=3e-2)


@cuda
def test_cuda_accepts_masks_built_on_the_cpu():
    z, pos, neg = random_case(6, 3, seed=14, dtype=torch.float32)
    loss = masked_info_nce(z.cuda(), pos, neg, 0.1)
    assert loss.device.type == "cuda"
    torch.testing.assert_close(loss.cpu(), masked_info_nce(z, pos, neg, 0.1), rtol=1e-4, atol=1e-4)


@cuda
def test_cuda_matches_cpu():
    z, pos, neg = random_case(40, 16, seed=15, dtype=torch.float32)
    for reduction in ("pairs", "anchors"):
        cpu = masked_info_nce(z, pos, neg, 0.1, reduction)
        gpu = masked_info_nce(z.cuda(), pos.cuda(), neg.cuda(), 0.1, reduction, chunk_size=7)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


@cuda
def test_cuda_autocast_fp16_is_finite():
    z, pos, neg = random_case(40, 16, seed=16, dtype=torch.float32)
    layer = torch.nn.Linear(16, 16).cuda()
    with torch.autocast("cuda", dtype=torch.float16):
        loss = masked_info_nce(layer(z.cuda()), pos.cuda(), neg.cuda(), 0.05)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------
def test_errors():
    z, pos, neg = random_case(5, 3)
    with pytest.raises(ValueError, match="positives must be"):
        masked_info_nce(z, pos[:4, :4], neg, 0.1)
    with pytest.raises(ValueError, match="negatives must be"):
        masked_info_nce(z, pos, neg[:, :4], 0.1)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        masked_info_nce(z[None], pos, neg, 0.1)
    with pytest.raises(TypeError, match="bool"):
        masked_info_nce(z, pos.float(), neg, 0.1)
    with pytest.raises(TypeError, match="bool"):
        masked_info_nce(z, pos, neg.long(), 0.1)
    with pytest.raises(TypeError, match="floating"):
        masked_info_nce(z.long(), pos, neg, 0.1)
    for bad in (0, 0.0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            masked_info_nce(z, pos, neg, bad)
    for bad in ("0.1", None, True):
        with pytest.raises(TypeError, match="temperature"):
            masked_info_nce(z, pos, neg, bad)
    with pytest.raises(ValueError, match="reduction"):
        masked_info_nce(z, pos, neg, 0.1, "mean")
    with pytest.raises(ValueError, match="chunk_size"):
        masked_info_nce(z, pos, neg, 0.1, chunk_size=0)
    with pytest.raises(ValueError, match="no positive pair"):
        masked_info_nce(z, torch.zeros_like(pos), neg, 0.1)
    with pytest.raises(ValueError, match="no positive pair"):
        masked_info_nce(z, torch.eye(5, dtype=torch.bool), neg, 0.1)  # only self pairs
    bm = BlockMask(torch.ones(1, 1, dtype=torch.bool), pos)
    with pytest.raises(TypeError, match="both"):
        masked_info_nce(z[None], bm, neg, 0.1)
    with pytest.raises(ValueError, match="blocks"):
        masked_info_nce(z.reshape(5, 1, 3), bm, bm, 0.1)
    with pytest.raises(TypeError, match="bool"):
        BlockMask(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="square"):
        BlockMask(torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool))


def test_loop_reference_skips_and_raises_like_the_kernel():
    z, pos, neg = random_case(5, 3)
    with pytest.raises(ValueError):
        info_nce_loop_reference(z, torch.zeros_like(pos), neg, 0.1)


# ---------------------------------------------------------------------------------------------------------------
# Regions
# ---------------------------------------------------------------------------------------------------------------
def test_sparse_corners_match_the_official_48x48_layout():
    corners = {tuple(c) for c in sparse_region_corners(48, 48, 3).tolist()}
    lattice = {(y, x) for y in (0, 22, 44) for x in (0, 22, 44)} | {(y, x) for y in (11, 33) for x in (11, 33)}
    assert corners == lattice and len(sparse_region_corners(48, 48, 3)) == 13
    small = sparse_region_corners(24, 24, 3)
    assert small.max() + 3 <= 24 and len({tuple(c) for c in small.tolist()}) == 13
    with pytest.raises(ValueError, match="too small"):
        sparse_region_corners(7, 48, 3)


@pytest.mark.parametrize("pooling", ["flatten", "mean"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_pool_regions_matches_slicing(pooling, k):
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 3, 8, 7, generator=g)
    for corners in (None, sparse_region_corners(8, 7, 1) if k == 1 else torch.tensor([[0, 0], [5, 4], [2, 3]])):
        got = pool_regions(f, k, pooling, corners)
        cs = grid_region_corners(8, 7, k) if corners is None else corners
        for b in range(2):
            for r, (y, x) in enumerate(cs.tolist()):
                patch = f[b, :, y : y + k, x : x + k]
                want = patch.reshape(-1) if pooling == "flatten" else patch.mean(dim=(1, 2))
                torch.testing.assert_close(got[b, r], want)
    assert pool_regions(f, k, pooling).shape[1] == (8 // k) * (7 // k)


def test_pool_regions_errors():
    f = torch.randn(1, 2, 6, 6)
    with pytest.raises(ValueError, match="pooling"):
        pool_regions(f, 2, "max")
    with pytest.raises(ValueError, match="region_size"):
        pool_regions(f, 7)
    with pytest.raises(ValueError, match="inside"):
        pool_regions(f, 3, corners=[[4, 0]])
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        pool_regions(f[0], 2)


# ---------------------------------------------------------------------------------------------------------------
# pair_info_nce: negatives per positive pair
# ---------------------------------------------------------------------------------------------------------------
def pair_case(n=9, d=5, m=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    anchor = torch.tensor([0, 0, 1, 4, 4, 4, 7])
    key = torch.tensor([1, 2, 0, 5, 6, 8, 3])
    negatives = torch.stack([torch.tensor([k for k in torch.randperm(n, generator=g).tolist() if k not in (a, p)][:m])
                             for a, p in zip(anchor.tolist(), key.tolist())])
    return z, anchor, key, negatives


def pair_loop(z, anchor, key, negatives, t, reduction="pairs"):
    zn = z / z.norm(dim=1, keepdim=True)
    terms = {}
    for a, p, negs in zip(anchor.tolist(), key.tolist(), negatives.tolist()):
        s_p = zn[a] @ zn[p] / t
        den = torch.exp(s_p) + sum(torch.exp(zn[a] @ zn[k] / t) for k in negs)
        terms.setdefault(a, []).append(-torch.log(torch.exp(s_p) / den))
    if reduction == "pairs":
        return torch.stack([x for v in terms.values() for x in v]).mean()
    return torch.stack([torch.stack(v).mean() for v in terms.values()]).mean()


@pytest.mark.parametrize("reduction", ["pairs", "anchors"])
@pytest.mark.parametrize("t", [0.1, 0.5])
def test_pair_info_nce_matches_loop(reduction, t):
    z, anchor, key, negatives = pair_case()
    got = pair_info_nce(z, anchor, key, negatives, t, reduction)
    torch.testing.assert_close(got, pair_loop(z, anchor, key, negatives, t, reduction), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda x: pair_info_nce(x, anchor, key, negatives, t, reduction), (z.clone().requires_grad_(),)
    )


def test_pair_info_nce_equals_kernel_when_negatives_are_per_anchor():
    z, positives, negatives = random_case(8, 4, seed=3)
    negatives &= ~positives  # the kernel counts a positive that is also a negative once; keep them apart
    positives.fill_diagonal_(False)
    negatives.fill_diagonal_(False)
    anchor, key = positives.nonzero(as_tuple=True)
    # pad every anchor's negatives to the same number by listing each pair's negatives, then compare per pair
    for a in range(8):
        negatives[a] &= negatives[a].cumsum(0) <= 2  # at most 2 negatives per anchor, same for all pairs of a
    keep = negatives[anchor].sum(1) == 2
    anchor, key = anchor[keep], key[keep]
    per_pair = torch.stack([negatives[a].nonzero().flatten() for a in anchor.tolist()])
    masks = torch.zeros_like(positives)
    masks[anchor, key] = True
    want = masked_info_nce(z, masks, negatives, 0.2)
    torch.testing.assert_close(pair_info_nce(z, anchor, key, per_pair, 0.2), want, rtol=1e-12, atol=1e-12)


def test_pair_info_nce_constant_embeddings_and_errors():
    z = torch.ones(6, 3)
    anchor, key, negatives = torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([[2, 3, 4], [3, 4, 5]])
    loss = pair_info_nce(z, anchor, key, negatives, 0.1)
    assert loss.dtype == torch.float32 and float(loss) == pytest.approx(math.log(4))
    no_neg = pair_info_nce(z, anchor, key, negatives[:, :0], 0.1)
    assert float(no_neg) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="own anchor or key"):
        pair_info_nce(z, anchor, key, torch.tensor([[1, 3, 4], [3, 4, 5]]), 0.1)
    with pytest.raises(ValueError, match="itself"):
        pair_info_nce(z, anchor, anchor, negatives, 0.1)
    with pytest.raises(ValueError, match="outside"):
        pair_info_nce(z, anchor, key, torch.tensor([[2, 3, 6], [3, 4, 5]]), 0.1)
    with pytest.raises(TypeError, match="int64"):
        pair_info_nce(z, anchor.int(), key, negatives, 0.1)
    with pytest.raises(ValueError, match="same number"):
        pair_info_nce(z, anchor, key[:1], negatives, 0.1)
    with pytest.raises(ValueError, match="no positive"):
        pair_info_nce(z, anchor[:0], key[:0], negatives[:0], 0.1)
    with pytest.raises(ValueError, match="reduction"):
        pair_info_nce(z, anchor, key, negatives, 0.1, "mean")
    with pytest.raises(ValueError, match="temperature"):
        pair_info_nce(z, anchor, key, negatives, 0.0)
