"""The memory-bounded block form of masked InfoNCE, with its own autograd backward (private helpers only).
Computes :func:`~glcl_core.contrastive.kernel.masked_info_nce` piece by piece, never building the full similarities.

``blocks: (G, n, D)`` with :class:`~glcl_core.contrastive.kernel.BlockMask` masks (a dense batch is one block): the
positive logits are gathered (per pair, or through per-position Gram matrices over blocks), the per-anchor
log-sum-exp over the negatives runs block pair by block pair in :class:`_NegativeLogSumExp`, whose backward
recomputes a piece when its exponentials were not kept, so memory stays bounded by ``chunk_size``.
"""
from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from glcl_core.contrastive.kernel import BlockMask


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
