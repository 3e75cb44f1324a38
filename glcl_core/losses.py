"""The one contrastive kernel (masked InfoNCE) and the region gathering the local loss needs.

Every strategy (G^R, G^D-, G^D, PCL, L^R, L^D) is a pair of boolean masks over a batch of embeddings; this module
turns embeddings + masks into a loss and knows nothing of volumes, partitions or positions.

For a positive pair ``(i, p)`` (``i != p``) with similarities ``s = cos(z_i, z_j) / t``::

    term(i, p) = -log( exp(s_ip) / (exp(s_ip) + sum_{k in neg(i), k not in {i, p}} exp(s_ik)) )

``reduction="pairs"`` averages the terms over all positive pairs (GLCL); ``"anchors"`` averages each anchor's terms
over its positives, then over the anchors that have any (SupCon / PCL).

Masks come in two shapes:

* dense: ``z: (N, D)``, ``positives, negatives: (N, N)`` bool (global strategies, small local cases);
* block-structured (:class:`BlockMask`): ``z: (G, n, D)`` in ``G`` blocks of ``n`` (local loss: one block per
  image, ``n = 2 x regions``); the ``(G*n, G*n)`` mask is ``outer[a, b] & inner[q, q']`` and is never built, so a
  dense 48x48 local loss costs ``O(pairs of blocks x n^2)`` time and bounded memory (``chunk_size``).

:func:`pair_info_nce` is the same term with one negative set per positive *pair* (given as indices), which the
official L^D needs (its negatives depend on the positive); it is for small sparse problems only.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

REDUCTIONS = ("pairs", "anchors")
POOLINGS = ("flatten", "mean")

__all__ = [
    "REDUCTIONS",
    "POOLINGS",
    "BlockMask",
    "masked_info_nce",
    "info_nce_loop_reference",
    "pair_info_nce",
    "SPARSE_LATTICE",
    "SPARSE_EXTRA_LATTICE",
    "OFFICIAL_SPARSE_NEGATIVES",
    "OFFICIAL_SPARSE_NEGATIVES_1X1",
    "official_negative_regions",
    "sparse_region_corners",
    "grid_region_corners",
    "pool_regions",
]


# ----------------------------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockMask:
    """A ``(G*n, G*n)`` boolean mask stored as ``outer (G, G)`` x ``inner (n, n)``.

    Entry ``[(a, q), (b, q')]`` (row ``a*n + q``, column ``b*n + q'``) is ``outer[a, b] & inner[q, q']``.
    The local strategies use it with one block per image and ``q = view * n_regions + region``.
    """

    outer: torch.Tensor
    inner: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("outer", "inner"):
            m = getattr(self, name)
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
                raise TypeError(f"BlockMask.{name} must be a bool tensor, got {_describe(m)}")
            if m.dim() != 2 or m.shape[0] != m.shape[1]:
                raise ValueError(f"BlockMask.{name} must be square (k, k), got {tuple(m.shape)}")

    @property
    def n_blocks(self) -> int:
        return int(self.outer.shape[0])

    @property
    def block_size(self) -> int:
        return int(self.inner.shape[0])

    def to_dense(self) -> torch.Tensor:
        """The full ``(G*n, G*n)`` bool mask (for tests and plots; memory ``(G*n)^2``)."""
        g, n = self.n_blocks, self.block_size
        return (self.outer[:, None, :, None] & self.inner[None, :, None, :]).reshape(g * n, g * n)

    def to(self, device: torch.device | str) -> "BlockMask":
        return BlockMask(self.outer.to(device), self.inner.to(device))


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of dtype {x.dtype} and shape {tuple(x.shape)}"
    return type(x).__name__


# ----------------------------------------------------------------------------------------------------------------
# The kernel
# ----------------------------------------------------------------------------------------------------------------
def masked_info_nce(
    z: torch.Tensor,
    positives: torch.Tensor | BlockMask,
    negatives: torch.Tensor | BlockMask,
    temperature: float,
    reduction: str = "pairs",
    *,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Masked InfoNCE: the one contrastive loss behind every strategy.

    Args:
        z: ``(N, D)`` embeddings (L2-normalised here), or ``(G, n, D)`` with :class:`BlockMask` masks.
        positives: ``(N, N)`` bool, ``positives[i, p]`` marks ``p`` as a positive of anchor ``i`` (the diagonal is
            ignored); or a :class:`BlockMask` of ``G`` blocks of ``n``.
        negatives: same form; ``negatives[i, k]`` puts ``k`` in the denominator of anchor ``i``. A positive that is
            also a negative is counted once (e.g. SimCLR/PCL, where the denominator is every other embedding).
        temperature: ``t > 0``.
        reduction: ``"pairs"`` (mean over positive pairs, GLCL) or ``"anchors"`` (mean over anchors of the mean over
            their positives, SupCon/PCL). Anchors without positives are skipped.
        chunk_size: anchor rows per similarity piece (``n`` = keys per anchor: ``N``, or ``n`` for blocks). ``None``
            computes everything in one piece. An int bounds the memory to a few pieces of about ``chunk_size x n``
            floats: the exponentials are kept for backward only while they fit in 4 pieces, otherwise each piece
            is recomputed in backward (checkpointing). Results do not depend on it beyond rounding.

    Returns:
        Scalar loss, float32 (float64 if ``z`` is float64), computed in full precision even under autocast.

    Raises:
        TypeError: non-tensor ``z``, non-float ``z``, non-bool masks, non-numeric temperature.
        ValueError: shape mismatch, ``temperature <= 0``, unknown reduction, no positive pair in the batch.
    """
    temperature = _check_temperature(temperature)
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a tensor, got {_describe(z)}")
    if not z.is_floating_point():
        raise TypeError(f"z must be a floating-point tensor, got {z.dtype}")

    if isinstance(positives, BlockMask) or isinstance(negatives, BlockMask):
        if not (isinstance(positives, BlockMask) and isinstance(negatives, BlockMask)):
            raise TypeError("positives and negatives must both be BlockMask, or both be (N, N) bool tensors")
        if z.dim() != 3:
            raise ValueError(f"with BlockMask masks z must be (G, n, D), got {tuple(z.shape)}")
        g, n = z.shape[0], z.shape[1]
        for name, m in (("positives", positives), ("negatives", negatives)):
            if m.n_blocks != g or m.block_size != n:
                raise ValueError(
                    f"{name} BlockMask is {m.n_blocks} blocks of {m.block_size}, but z is {g} blocks of {n}"
                )
        blocks, pos, neg = z, positives.to(z.device), negatives.to(z.device)
    else:
        if z.dim() != 2:
            raise ValueError(f"z must be (N, D), got {tuple(z.shape)}")
        n = z.shape[0]
        for name, m in (("positives", positives), ("negatives", negatives)):
            if not isinstance(m, torch.Tensor) or m.dtype != torch.bool:
                raise TypeError(f"{name} must be a bool tensor (N, N), got {_describe(m)}")
            if tuple(m.shape) != (n, n):
                raise ValueError(f"{name} must be ({n}, {n}) to match z {tuple(z.shape)}, got {tuple(m.shape)}")
        # A dense batch is one block: outer = [[True]], inner = the full mask.
        one = torch.ones(1, 1, dtype=torch.bool, device=z.device)
        blocks = z.unsqueeze(0)
        pos = BlockMask(one, positives.to(z.device))
        neg = BlockMask(one, negatives.to(z.device))
    if blocks.shape[-1] < 1 or blocks.shape[1] < 1:
        raise ValueError(f"z must have at least one embedding of at least one feature, got {tuple(z.shape)}")
    return _block_info_nce(blocks, pos, neg, temperature, reduction, chunk_size)


def _check_temperature(temperature: object) -> float:
    if isinstance(temperature, torch.Tensor) and temperature.numel() == 1:
        temperature = float(temperature)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    return float(temperature)


def _autocast_off(device: torch.device):
    """Disable autocast on this device: the logsumexp runs in float32 whatever the surrounding precision."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type autocast does not know: nothing to disable
        return contextlib.nullcontext()


def _block_info_nce(
    blocks: torch.Tensor, pos: BlockMask, neg: BlockMask, temperature: float, reduction: str, chunk_size: int | None
) -> torch.Tensor:
    """``blocks: (G, n, D)``; masks as :class:`BlockMask`. See :func:`masked_info_nce`."""
    device = blocks.device
    dtype = torch.float64 if blocks.dtype == torch.float64 else torch.float32
    g, n, d = blocks.shape
    # Finite stand-in for log(0): keeps every gradient finite (exp underflows to exactly 0, no inf - inf).
    very_negative = torch.finfo(dtype).min / 2
    with _autocast_off(device):
        emb = F.normalize(blocks.to(dtype), dim=-1)
        inv_t = 1.0 / temperature

        # --- positive pairs as flat (anchor, key) indices into the G*n embeddings, self-pairs dropped
        pa, pb = pos.outer.nonzero(as_tuple=True)
        qa, qb = pos.inner.nonzero(as_tuple=True)
        anchor = (pa[:, None] * n + qa[None, :]).reshape(-1)
        key = (pb[:, None] * n + qb[None, :]).reshape(-1)
        keep = anchor != key
        anchor, key = anchor[keep], key[keep]
        n_pairs = int(anchor.numel())
        if n_pairs == 0:
            raise ValueError("no positive pair in the batch: every anchor lacks a positive (check the masks/metadata)")

        # A piece holds about chunk_size x n similarities (negatives) or as many floats of gathered embeddings.
        budget = None if chunk_size is None else chunk_size * n
        na, nb = neg.outer.nonzero(as_tuple=True)
        if g == 1 and (chunk_size is None or chunk_size >= n):
            # --- one small block (the global strategies): the whole (n, n) similarity matrix at once
            sims = emb[0] @ emb[0].T * inv_t
            if na.numel():
                keep_neg = neg.inner & ~torch.eye(n, dtype=torch.bool, device=device)
                neg_lse = torch.logsumexp(sims.masked_fill(~keep_neg, very_negative), dim=1)[None]
            else:
                neg_lse = torch.full((1, n), very_negative, dtype=dtype, device=device)
            pos_logits = sims[anchor, key]
        else:
            if g * g <= 4 * pa.numel():
                # many block pairs (L^D): per inner pair, one (G, G) Gram matrix over blocks, then pick (pa, pb);
                # reads each embedding once per inner pair instead of once per (block pair, inner pair)
                grid = _positive_logits_by_gram(emb, pa, pb, qa, qb, inv_t, budget)
                pos_logits = grid.reshape(-1)[keep]
            else:
                flat = emb.reshape(g * n, d)
                pos_logits = _positive_logits(flat, anchor, key, inv_t, None if budget is None else max(1, budget // d))
            # --- per-anchor log-sum-exp over its negatives, block pair by block pair
            neg_lse = _negative_logsumexp(emb, na, nb, neg.inner, inv_t, chunk_size, very_negative)

        # --- pair terms: log(exp(s_ip) + negatives without p) - s_ip; if p is itself a negative it is already in
        # the log-sum-exp, so it is not added a second time.
        ab, aq = anchor // n, anchor % n
        kb, kq = key // n, key % n
        p_is_negative = neg.outer[ab, kb] & neg.inner[aq, kq]
        lse_anchor = neg_lse.reshape(-1)[anchor]
        log_denominator = torch.where(p_is_negative, lse_anchor, torch.logaddexp(pos_logits, lse_anchor))
        terms = log_denominator - pos_logits

        if reduction == "pairs":
            return terms.sum() / n_pairs
        per_anchor = torch.zeros(g * n, dtype=dtype, device=device).index_add(0, anchor, terms)
        counts = torch.bincount(anchor, minlength=g * n)
        has = counts > 0
        return (per_anchor[has] / counts[has].to(dtype)).mean()


def _pair_logits(flat: torch.Tensor, anchor: torch.Tensor, key: torch.Tensor, inv_t: float) -> torch.Tensor:
    """``flat: (M, D)`` normalised; ``anchor, key: (P,)`` -> ``(P,)`` similarities / t."""
    return (flat[anchor] * flat[key]).sum(-1) * inv_t


def _positive_logits(
    flat: torch.Tensor, anchor: torch.Tensor, key: torch.Tensor, inv_t: float, piece: int | None
) -> torch.Tensor:
    """Similarities of the positive pairs, in pieces of ``piece`` pairs; checkpointed so that backward keeps only
    one piece of gathered embeddings at a time."""
    if piece is None or anchor.numel() <= piece:
        return _pair_logits(flat, anchor, key, inv_t)
    grad = torch.is_grad_enabled() and flat.requires_grad
    out = []
    for s in range(0, anchor.numel(), piece):
        args = (flat, anchor[s : s + piece], key[s : s + piece], inv_t)
        out.append(checkpoint(_pair_logits, *args, use_reentrant=False) if grad else _pair_logits(*args))
    return torch.cat(out)


def _negative_pieces(emb, na, nb, inner, n_same, rows, blocks_per_piece, very_negative, shift):
    """Yield ``(s, e, r0, r1, bias)``: block pairs ``s:e`` x anchor rows ``r0:r1``, with the additive mask ``bias``
    ``(1, rows, n)``: ``-shift`` where a key counts, ``very_negative`` elsewhere, incl. the anchor itself for
    same-block pairs, which come first: ``na[:n_same] == nb[:n_same]``."""
    n = emb.shape[1]
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        bias_cross = torch.full((1, r1 - r0, n), -shift, dtype=emb.dtype, device=emb.device)
        bias_cross.masked_fill_(~inner[r0:r1].unsqueeze(0), very_negative)
        bias_self = bias_cross.clone()
        local = torch.arange(r1 - r0, device=emb.device)
        bias_self[0, local, local + r0] = very_negative
        for lo, hi, bias in ((0, n_same, bias_self), (n_same, na.numel(), bias_cross)):
            for s in range(lo, hi, blocks_per_piece):
                yield s, min(hi, s + blocks_per_piece), r0, r1, bias


def _gram_piece(emb, qa, qb, pa, pb, inv_t):
    """``(K, P)`` logits ``<emb[pa[k], qa[p]], emb[pb[k], qb[p]]> / t`` through per-``p`` Gram matrices over blocks."""
    by_position = emb.transpose(0, 1)  # (n, G, D) view
    x = by_position[qa]  # (P, G, D), gathered contiguous
    y = by_position[qb]
    return torch.bmm(x, y.transpose(1, 2))[:, pa, pb].T * inv_t


def _positive_logits_by_gram(emb, pa, pb, qa, qb, inv_t, budget):
    g, _, d = emb.shape
    piece = qa.numel() if budget is None else max(1, budget // (g * d))
    if qa.numel() <= piece:
        return _gram_piece(emb, qa, qb, pa, pb, inv_t)
    grad = torch.is_grad_enabled() and emb.requires_grad
    out = []
    for s in range(0, qa.numel(), piece):
        args = (emb, qa[s : s + piece], qb[s : s + piece], pa, pb, inv_t)
        out.append(checkpoint(_gram_piece, *args, use_reentrant=False) if grad else _gram_piece(*args))
    return torch.cat(out, dim=1)


def _piece_operands(emb, na, nb, s, e, r0, r1, n_same):
    """``anchors (c, rows, D)``, ``keys (c, n, D)`` of a piece; same-block pieces gather once (anchors = a view)."""
    keys = emb.index_select(0, nb[s:e])
    if e <= n_same:
        return keys[:, r0:r1], keys
    return emb[:, r0:r1].index_select(0, na[s:e]), keys


def _accumulate(target: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    """``target[index[j]] += values[j]`` (duplicates add up). On CPU a short loop of in-place adds is much faster
    than ``index_add_`` along the first axis of large blocks."""
    if target.device.type != "cpu" or index.numel() > 256:
        target.index_add_(0, index, values)
        return
    for j, block in enumerate(index.tolist()):
        target[block].add_(values[j])


class _NegativeLogSumExp(torch.autograd.Function):
    """Per (block pair, anchor row): ``logsumexp_k(inv_t * <e_anchor, e_k> + mask_k)`` over the key block.

    ``emb: (G, n, D)``, ``na, nb: (K,)`` block pairs -> ``(K, n)``, computed piece by piece. Embeddings are unit
    vectors, so similarities lie in ``[-1/t, 1/t]``: when ``exp(-2/t)`` cannot underflow, the log-sum-exp uses the
    fixed shift ``1/t`` folded into the mask (no max pass), else a per-row max. The exponentials are kept for
    backward only while they fit in ``save_limit`` entries; beyond that backward recomputes each piece in place
    (checkpointing without a second log-sum-exp), so memory stays one piece at a time. The gradient is accumulated
    into one ``(G, n, D)`` buffer with two products per piece and no extra pass over the similarities.
    """

    @staticmethod
    def forward(ctx, emb, na, nb, inner, n_same, inv_t, rows, blocks_per_piece, very_negative, save_limit):
        n = emb.shape[1]
        underflow_edge = -math.log(torch.finfo(emb.dtype).tiny) - 8  # exp(-x) stays a normal number below this
        shift = inv_t if 2 * inv_t < underflow_edge else 0.0
        out = emb.new_empty((na.numel(), n))
        keep_exp = na.numel() * n * n <= save_limit
        saved = []
        config = (n_same, rows, blocks_per_piece, very_negative, shift)
        for s, e, r0, r1, bias in _negative_pieces(emb, na, nb, inner, *config):
            anchors, keys = _piece_operands(emb, na, nb, s, e, r0, r1, n_same)
            sims = torch.baddbmm(bias, anchors, keys.transpose(1, 2), alpha=inv_t)
            if shift:
                top = shift
                total = sims.exp_().sum(dim=-1)  # in place: no second buffer of the similarities' size
            else:
                top = sims.amax(dim=-1, keepdim=True)
                total = sims.sub_(top).exp_().sum(dim=-1)
                top = top.squeeze(-1)
            value = total.log() + top
            # a row without negatives: exactly very_negative (finite, so every gradient stays finite)
            out[s:e, r0:r1] = torch.where(value > very_negative / 2, value, very_negative)
            if keep_exp:
                saved.append((sims, total))
        ctx.save_for_backward(emb, na, nb, inner, out)
        ctx.config = (inv_t, config)
        ctx.saved_exp = saved if keep_exp else None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        emb, na, nb, inner, out = ctx.saved_tensors
        inv_t, config = ctx.config
        n = emb.shape[1]
        symmetric = bool(torch.equal(inner, inner.T))  # then same-block similarity pieces are symmetric too
        n_same, very_negative, shift = config[0], config[-2], config[-1]
        saved = ctx.saved_exp  # not modified in place: backward may run twice (retain_graph)
        grad = torch.zeros_like(emb)
        for i, (s, e, r0, r1, bias) in enumerate(_negative_pieces(emb, na, nb, inner, *config)):
            anchors, keys = _piece_operands(emb, na, nb, s, e, r0, r1, n_same)
            # d lse / d sims is the softmax exp(sims - lse); masked keys underflow to exactly 0. Rows without any
            # negative have no gradient (their weights are finite, the scale is 0).
            lse = out[s:e, r0:r1]
            has_negatives = lse > very_negative / 2
            if saved is not None:  # W_ij / total_i is the softmax
                weights, total = saved[i]
                scale = grad_out[s:e, r0:r1] * inv_t / total.clamp_min(torch.finfo(total.dtype).tiny)
            elif shift:  # recompute W_ij = exp(s_ij - shift); total_i = exp(lse_i - shift)
                weights = torch.baddbmm(bias, anchors, keys.transpose(1, 2), alpha=inv_t).exp_()
                scale = grad_out[s:e, r0:r1] * inv_t * torch.exp(shift - lse)
            else:  # recompute the softmax itself
                weights = torch.baddbmm(bias, anchors, keys.transpose(1, 2), alpha=inv_t)
                weights.sub_(lse.unsqueeze(-1)).exp_()
                scale = grad_out[s:e, r0:r1] * inv_t
            scale = torch.where(has_negatives, scale, 0.0).unsqueeze(-1)
            # with a fixed shift, W of a same-block piece covering all rows is symmetric (so is its mask)
            if shift and symmetric and e <= n_same and r0 == 0 and r1 == n:
                # anchors == keys and W symmetric: d/dE = (diag(s) W + W diag(s)) E = (W * (s_i + s_j)) E, one product
                both = (weights * scale).addcmul_(weights, scale.transpose(1, 2))
                _accumulate(grad, nb[s:e], torch.bmm(both, keys))
                continue
            # d/d anchor_i = scale_i sum_j W_ij key_j ; d/d key_j = sum_i W_ij scale_i anchor_i
            _accumulate(grad[:, r0:r1], na[s:e], torch.bmm(weights, keys).mul_(scale))
            _accumulate(grad, nb[s:e], torch.bmm(weights.transpose(1, 2), anchors * scale))
        return grad, None, None, None, None, None, None, None, None, None


def _negative_logsumexp(
    emb: torch.Tensor,
    na: torch.Tensor,
    nb: torch.Tensor,
    inner: torch.Tensor,
    inv_t: float,
    chunk_size: int | None,
    very_negative: float,
) -> torch.Tensor:
    """``(G, n)``: log of the summed exp-similarities of each anchor to its negatives (about ``very_negative`` if
    none). ``emb: (G, n, D)``; ``(na[k], nb[k])``: the block pairs where ``outer`` is True; ``inner: (n, n)``."""
    g, n, _ = emb.shape
    dtype, device = emb.dtype, emb.device
    if na.numel() == 0:
        return torch.full((g, n), very_negative, dtype=dtype, device=device)
    rows = n if chunk_size is None else min(n, chunk_size)
    blocks_per_piece = na.numel() if chunk_size is None else max(1, chunk_size // rows)
    same = na == nb
    order = torch.cat([same.nonzero().flatten(), (~same).nonzero().flatten()])
    na, nb = na[order], nb[order]
    n_same = int(same.sum())
    # keep the exponentials for backward while they take at most ~4 pieces of memory
    save_limit = 4 * blocks_per_piece * rows * n
    parts = _NegativeLogSumExp.apply(
        emb, na, nb, inner, n_same, inv_t, rows, blocks_per_piece, very_negative, save_limit
    )
    if g == 1 and na.numel() == 1:
        return parts
    if na.numel() == g and bool((torch.sort(na).values == torch.arange(g, device=device)).all()):
        # one key block per anchor block (L^R, L^D: negatives only inside the image): nothing to combine
        return torch.empty_like(parts).index_copy(0, na, parts)
    # Combine the block pairs of each anchor block: log-sum-exp via a detached max shift (exact gradient, since the
    # shift cancels) and index_add, so no (G, G, n) tensor is built.
    shift = torch.full((g, n), very_negative, dtype=dtype, device=device)
    shift = shift.scatter_reduce(0, na[:, None].expand(-1, n), parts.detach(), "amax", include_self=True)
    summed = torch.zeros((g, n), dtype=dtype, device=device).index_add(0, na, torch.exp(parts - shift[na]))
    return shift + torch.log(summed.clamp_min(torch.finfo(dtype).tiny))


# ----------------------------------------------------------------------------------------------------------------
# Per-pair negatives (the official L^D): small index-based form of the same InfoNCE term
# ----------------------------------------------------------------------------------------------------------------
def pair_info_nce(
    z: torch.Tensor,
    anchor: torch.Tensor,
    key: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
    reduction: str = "pairs",
) -> torch.Tensor:
    """InfoNCE where every positive *pair* has its own negatives (``masked_info_nce`` has one set per anchor).

    For pair ``j = (i, p) = (anchor[j], key[j])``::

        term_j = -log( exp(s_ip) / (exp(s_ip) + sum_{k in negatives[j]} exp(s_ik)) ),   s = cos / t

    The official L^D needs this form: the negatives of a pair come from the two images of that pair, so one
    anchor has different negatives for each of its positives. Everything is gathered by index, so the cost is
    ``O(P x M x D)``: meant for the sparse local form (a few hundred pairs, a handful of negatives each).

    Args:
        z: ``(N, D)`` embeddings (L2-normalised here).
        anchor, key: ``(P,)`` int64 indices into ``z``; ``anchor[j] != key[j]``.
        negatives: ``(P, M)`` int64 indices into ``z``, the negatives of each pair (``M`` may be 0). An index listed
            twice counts twice; the anchor and the key of a pair must not be among its own negatives.
        temperature: ``t > 0``.
        reduction: ``"pairs"`` (mean over pairs) or ``"anchors"`` (mean over anchors of the mean over their pairs).

    Returns:
        Scalar loss, float32 (float64 if ``z`` is float64), computed with autocast off (as :func:`masked_info_nce`).
    """
    temperature = _check_temperature(temperature)
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
    if not isinstance(z, torch.Tensor) or not z.is_floating_point() or z.dim() != 2:
        raise ValueError(f"z must be a floating-point (N, D) tensor, got {_describe(z)}")
    n = z.shape[0]
    index = {}
    for name, t, dims in (("anchor", anchor, 1), ("key", key, 1), ("negatives", negatives, 2)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.long or t.dim() != dims:
            raise TypeError(f"{name} must be an int64 tensor with {dims} dimension(s), got {_describe(t)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
            raise ValueError(f"{name} has indices outside [0, {n})")
        index[name] = t.to(z.device)
    anchor, key, negatives = index["anchor"], index["key"], index["negatives"]
    p = anchor.shape[0]
    if p == 0:
        raise ValueError("no positive pair in the batch")
    if key.shape[0] != p or negatives.shape[0] != p:
        raise ValueError(f"anchor, key and negatives must have the same number of pairs, got "
                         f"{p}, {key.shape[0]} and {negatives.shape[0]}")
    if (anchor == key).any():
        raise ValueError("a positive pair joins an embedding with itself (anchor == key)")
    if negatives.numel() and ((negatives == anchor[:, None]) | (negatives == key[:, None])).any():
        raise ValueError("a pair lists its own anchor or key among its negatives")
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    with _autocast_off(z.device):
        emb = F.normalize(z.to(dtype), dim=-1)
        a = emb[anchor]  # (P, D)
        pos_logits = (a * emb[key]).sum(-1) / temperature  # (P,)
        neg_logits = torch.bmm(emb[negatives], a.unsqueeze(-1)).squeeze(-1) / temperature  # (P, M)
        terms = torch.logsumexp(torch.cat([pos_logits[:, None], neg_logits], dim=1), dim=1) - pos_logits
        if reduction == "pairs":
            return terms.mean()
        per_anchor = torch.zeros(n, dtype=dtype, device=z.device).index_add(0, anchor, terms)
        counts = torch.bincount(anchor, minlength=n)
        has = counts > 0
        return (per_anchor[has] / counts[has].to(dtype)).mean()


# ----------------------------------------------------------------------------------------------------------------
# Reference (tests and benchmark): a per-pair Python loop written straight from the definition
# ----------------------------------------------------------------------------------------------------------------
def info_nce_loop_reference(
    z: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, temperature: float, reduction: str = "pairs"
) -> torch.Tensor:
    """Slow reference for :func:`masked_info_nce` (dense masks only): one Python iteration per positive pair.

    ``z: (N, D)``; ``positives, negatives: (N, N)`` bool. Sums exponentials directly (no log-sum-exp tricks), so
    it is only meant for moderate temperatures and for checking the kernel; differentiable.
    """
    zn = z / z.norm(dim=1, keepdim=True)
    n = z.shape[0]
    pos = positives.tolist()
    neg = negatives.tolist()
    anchor_means, all_terms = [], []
    for i in range(n):
        sims = (zn @ zn[i]) / temperature  # (N,) similarities of anchor i
        terms_i = []
        for p in range(n):
            if p == i or not pos[i][p]:
                continue
            others = [k for k in range(n) if neg[i][k] and k != i and k != p]
            denominator = torch.exp(sims[p]) + torch.exp(sims[others]).sum()
            terms_i.append(-torch.log(torch.exp(sims[p]) / denominator))
        if terms_i:
            all_terms.extend(terms_i)
            anchor_means.append(torch.stack(terms_i).mean())
    if not all_terms:
        raise ValueError("no positive pair in the batch")
    if reduction == "pairs":
        return torch.stack(all_terms).mean()
    if reduction == "anchors":
        return torch.stack(anchor_means).mean()
    raise ValueError(f"unknown reduction {reduction!r}")


# ----------------------------------------------------------------------------------------------------------------
# Regions of a feature map (local loss)
# ----------------------------------------------------------------------------------------------------------------
# The sparse regions as lattice positions (fy, fx) in quarters of the span (span = side - K - 1): corner
# = f * span // 4, so one unit q = 11 on a 48x48 map with K = 3. Region r is SPARSE_LATTICE[r] (the official order).
SPARSE_LATTICE = (
    (0, 0), (0, 2), (0, 4), (2, 0), (2, 2), (2, 4), (4, 0), (4, 2), (4, 4), (1, 1), (1, 3), (3, 1), (3, 3)
)
# Four positions the official 3x3 negative table uses that are not among the 13 regions: pooled as regions 13..16,
# only ever negatives (never anchors, never positives).
SPARSE_EXTRA_LATTICE = ((1, 2), (2, 1), (2, 3), (3, 2))
# The official code's hand-picked negatives of each region (3x3 regions; lattice positions, in the code's order,
# which matters: its L^D keeps only the first 4 of each row). Checked against the official models.py
# (decoder_pretrain_net, 13 regions, local_reg_size=1).
OFFICIAL_SPARSE_NEGATIVES = (
    ((0, 2), (1, 1), (1, 2), (2, 0), (2, 1)),
    ((0, 0), (0, 4), (1, 1), (1, 3), (2, 2)),
    ((0, 2), (1, 2), (1, 3), (2, 3), (2, 4)),
    ((0, 0), (1, 1), (2, 2), (4, 0), (3, 1)),
    ((1, 1), (1, 3), (3, 1), (3, 3), (2, 0)),
    ((0, 4), (2, 2), (4, 4), (1, 3), (3, 3)),
    ((2, 0), (2, 1), (4, 2), (3, 1), (3, 2)),
    ((2, 2), (4, 0), (4, 4), (3, 1), (3, 3)),
    ((2, 3), (2, 4), (4, 2), (3, 3), (3, 2)),
    ((0, 0), (0, 2), (2, 0), (2, 2), (1, 3)),
    ((0, 2), (0, 4), (1, 1), (2, 2), (2, 4)),
    ((2, 0), (2, 2), (4, 0), (4, 2), (3, 3)),
    ((2, 2), (2, 4), (4, 2), (4, 4), (3, 1)),
)
# The official code's second table, for 1x1 regions (local_reg_size=0); all of its positions are among the 13.
OFFICIAL_SPARSE_NEGATIVES_1X1 = (
    ((0, 2), (2, 0), (2, 2), (1, 1), (1, 3)),
    ((0, 0), (0, 4), (2, 2), (1, 1), (1, 3)),
    ((0, 2), (2, 2), (2, 4), (3, 1), (1, 3)),
    ((0, 0), (2, 2), (4, 0), (1, 1), (3, 1)),
    ((1, 1), (1, 3), (3, 1), (3, 3), (2, 0)),
    ((0, 4), (2, 2), (4, 4), (1, 3), (3, 3)),
    ((2, 0), (2, 2), (4, 2), (3, 1), (1, 1)),
    ((2, 2), (4, 0), (4, 4), (3, 1), (3, 3)),
    ((2, 2), (2, 4), (4, 2), (3, 3), (3, 1)),
    ((0, 0), (0, 2), (2, 0), (2, 2), (1, 3)),
    ((0, 2), (0, 4), (2, 2), (2, 4), (3, 3)),
    ((2, 0), (2, 2), (4, 0), (0, 2), (1, 1)),
    ((2, 2), (2, 4), (4, 2), (4, 4), (1, 3)),
)


def official_negative_regions(region_size: int = 3) -> torch.Tensor:
    """The official hand-picked negatives as region indices: ``(13, 5)`` int64, row ``r`` = the negatives of region
    ``r`` in the official order, indices into the 17 regions of ``sparse_region_corners(..., extras=True)``
    (0..12 the sparse regions, 13..16 the extra positions of :data:`SPARSE_EXTRA_LATTICE`).

    ``region_size == 1`` gives the official 1x1 table (only indices < 13); any other size the 3x3 table (the
    official code has tables for 1x1 and 3x3 regions only).
    """
    table = OFFICIAL_SPARSE_NEGATIVES_1X1 if int(region_size) == 1 else OFFICIAL_SPARSE_NEGATIVES
    position = {pos: i for i, pos in enumerate(SPARSE_LATTICE + SPARSE_EXTRA_LATTICE)}
    return torch.tensor([[position[pos] for pos in row] for row in table], dtype=torch.long)


def sparse_region_corners(height: int, width: int, region_size: int = 3, extras: bool = False) -> torch.Tensor:
    """Top-left corners ``(13, 2)`` (row, col) of the paper's 13 fixed regions; ``(17, 2)`` with ``extras=True``.

    A 3x3 lattice at fractions {0, 1/2, 1} plus a 2x2 lattice at {1/4, 3/4} of the span ``side - K - 1`` (the
    official code's 44 for a 48x48 map with K = 3), i.e. corners from {0, 11, 22, 33, 44} on a 48x48 map: region
    ``r`` sits at ``SPARSE_LATTICE[r] * span // 4``. ``extras=True`` appends the 4 positions of
    :data:`SPARSE_EXTRA_LATTICE` (rows 13..16), which the official negative table uses as negatives only.
    With K = 1 the official code's span is ``side - 1``, one more than here (a small shift of the far corners).
    """
    spans = []
    for side, name in ((height, "height"), (width, "width")):
        span = side - region_size - 1
        if region_size < 1 or span < 4:
            raise ValueError(
                f"a {name} of {side} is too small for 13 distinct {region_size}x{region_size} regions "
                f"(needs at least region_size + 5 = {region_size + 5})"
            )
        spans.append(span)
    sy, sx = spans
    lattice = SPARSE_LATTICE + (SPARSE_EXTRA_LATTICE if extras else ())
    return torch.tensor([[fy * sy // 4, fx * sx // 4] for fy, fx in lattice], dtype=torch.long)


def grid_region_corners(height: int, width: int, region_size: int = 1) -> torch.Tensor:
    """Top-left corners ``(R, 2)`` of the dense grid: K x K regions with stride K, row-major (crops the remainder)."""
    if region_size < 1 or region_size > min(height, width):
        raise ValueError(f"region_size must be in [1, {min(height, width)}], got {region_size}")
    ys = torch.arange(height // region_size) * region_size
    xs = torch.arange(width // region_size) * region_size
    return torch.cartesian_prod(ys, xs)


def pool_regions(
    f: torch.Tensor, region_size: int, pooling: str = "flatten", corners: torch.Tensor | Sequence | None = None
) -> torch.Tensor:
    """Region vectors of feature maps.

    Args:
        f: ``(B, C, h, w)``.
        region_size: K.
        pooling: ``"flatten"`` -> ``C*K*K`` per region (channel-major, like ``f[b, :, y:y+K, x:x+K].reshape(-1)``),
            ``"mean"`` -> ``C``.
        corners: ``(R, 2)`` top-left corners; ``None`` = the dense grid (stride K, row-major), in the order of
            :func:`grid_region_corners`.

    Returns:
        ``(B, R, C*K*K)`` or ``(B, R, C)``.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if f.dim() != 4:
        raise ValueError(f"feature maps must be (B, C, h, w), got {tuple(f.shape)}")
    b, c, h, w = f.shape
    k = int(region_size)
    if k < 1 or k > min(h, w):
        raise ValueError(f"region_size must be in [1, {min(h, w)}] for {h}x{w} maps, got {region_size}")
    if corners is None:
        gh, gw = h // k, w // k
        tiles = f[:, :, : gh * k, : gw * k].reshape(b, c, gh, k, gw, k)
        if pooling == "mean":
            return tiles.mean(dim=(3, 5)).flatten(2).transpose(1, 2)  # (B, R, C)
        return tiles.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * k * k)
    corners = torch.as_tensor(corners, dtype=torch.long).reshape(-1, 2)
    if (corners < 0).any() or (corners[:, 0] + k > h).any() or (corners[:, 1] + k > w).any():
        raise ValueError(f"region corners must keep {k}x{k} regions inside the {h}x{w} map")
    offsets = torch.arange(k)
    ys = (corners[:, 0, None] + offsets).to(f.device)[:, :, None]  # (R, K, 1)
    xs = (corners[:, 1, None] + offsets).to(f.device)[:, None, :]  # (R, 1, K)
    # one gather (and one scatter in backward) rather than R slices, each with a full-size gradient
    tiles = f[:, :, ys, xs].transpose(1, 2)  # (B, R, C, K, K)
    if pooling == "mean":
        return tiles.mean(dim=(3, 4))
    return tiles.flatten(2)
