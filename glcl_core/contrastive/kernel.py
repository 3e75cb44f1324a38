"""The masked InfoNCE kernel: embeddings plus a positive and a negative mask give one contrastive loss.
Dense or block-structured (:class:`BlockMask`) masks, a per-pair-negatives form and a per-pair loop reference.

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

The memory-bounded block computation behind :func:`masked_info_nce` (and its custom backward) is in
:mod:`glcl_core.contrastive.kernel_blocks`; the region geometry of the local loss in
:mod:`glcl_core.contrastive.regions`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from glcl_core.contrastive.kernel_blocks import _autocast_off, _block_info_nce

REDUCTIONS = ("pairs", "anchors")

__all__ = [
    "REDUCTIONS",
    "BlockMask",
    "masked_info_nce",
    "info_nce_loop_reference",
    "pair_info_nce",
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
