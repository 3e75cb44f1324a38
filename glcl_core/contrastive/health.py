"""Training-health diagnostics of a contrastive stage: is it learning, or at chance / collapsed?
Chance level, positive retrieval and collapse measures (effective rank, spread) of a batch's embeddings.

A loss value alone says little: its scale depends on the batch and the masks. These numbers put it in context:

* ``chance_level``: the loss of a batch whose embeddings are all identical (every similarity equal), under the same
  masks. A stage that learns nothing stays at 1 x chance; a collapsed encoder sits exactly there.
* ``retrieval_top1``: for each embedding with a positive, is its nearest neighbour (cosine, itself excluded) one of
  its positives? For G^R the only positive is the other view, so this is top-1 view retrieval.
* ``effective_rank``: ``exp`` of the entropy of the normalised singular values (Roy & Vetterli 2007) of the
  L2-normalised embeddings, centred: how many directions the batch spreads over around its mean, up to
  ``min(N - 1, D)``; 1 when every embedding is the same (or all lie on one line). Centred, because the embeddings
  of a freshly initialised network share a large common direction (pairwise cosines near 1), which would put the
  uncentred measure near 1 before any training.
* ``embedding_std``: the mean over dimensions of the per-dimension standard deviation of the L2-normalised
  embeddings; 0 at collapse, about ``1 / sqrt(D)`` for embeddings spread over the sphere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from glcl_core.contrastive.kernel import BlockMask, masked_info_nce

COLLAPSE_RANK = 2.0  # effective rank below this: the embeddings span (almost) a single direction
CHANCE_TOLERANCE = 0.01  # a loss within 1 % of chance "sits at chance"
CHANCE_SHARE = 0.10  # ... for this share of a stage's logged steps: warn


def chance_level(
    positives: torch.Tensor | BlockMask,
    negatives: torch.Tensor | BlockMask,
    reduction: str = "pairs",
    temperature: float = 0.1,
) -> float:
    """Loss of identical embeddings under these masks (``(N, N)`` bool, or :class:`BlockMask` of ``G`` blocks of
    ``n``). With all similarities equal each term is ``log(1 + number of its negatives)``; the temperature then
    does not matter."""
    if isinstance(positives, BlockMask):
        z = torch.ones(positives.n_blocks, positives.block_size, 2, dtype=torch.float64)
    else:
        z = torch.ones(positives.shape[0], 2, dtype=torch.float64)
    return float(masked_info_nce(z, positives, negatives, temperature, reduction))


def _normalised(z: torch.Tensor) -> torch.Tensor:
    if z.dim() != 2:
        raise ValueError(f"z must be (N, D), got {tuple(z.shape)}")
    return F.normalize(z.detach().double(), dim=1)


@torch.no_grad()
def retrieval_top1(z: torch.Tensor, positives: torch.Tensor) -> float:
    """Share of anchors whose nearest neighbour is a positive. ``z: (N, D)``, ``positives: (N, N)`` bool.

    Candidates are every other embedding; anchors without any positive are skipped. NaN if no anchor has one."""
    zn = _normalised(z)
    n = zn.shape[0]
    if tuple(positives.shape) != (n, n):
        raise ValueError(f"positives must be ({n}, {n}), got {tuple(positives.shape)}")
    eye = torch.eye(n, dtype=torch.bool, device=zn.device)
    pos = positives.to(zn.device) & ~eye
    sim = (zn @ zn.T).masked_fill(eye, float("-inf"))
    nearest = sim.argmax(dim=1)
    has = pos.any(dim=1)
    if not bool(has.any()):
        return float("nan")
    hit = pos[torch.arange(n, device=zn.device), nearest]
    return float(hit[has].double().mean())


@torch.no_grad()
def effective_rank(z: torch.Tensor) -> float:
    """``exp(entropy(s / sum(s)))`` of the singular values ``s`` of the L2-normalised, centred ``z: (N, D)``
    (1.0 when the embeddings are identical)."""
    zn = _normalised(z)
    s = torch.linalg.svdvals(zn - zn.mean(dim=0, keepdim=True))
    if float(s.sum()) < 1e-9 * max(1, zn.shape[0]):
        return 1.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> float:
    """Mean per-dimension standard deviation of the L2-normalised ``z: (N, D)`` (0 at collapse)."""
    return float(_normalised(z).std(dim=0).mean())


def collapse_reason(rank: float, near_chance_steps: int, logged_steps: int) -> str | None:
    """Why a stage counts as collapsed, or None: effective rank below :data:`COLLAPSE_RANK`, or the loss within
    :data:`CHANCE_TOLERANCE` of chance at :data:`CHANCE_SHARE` or more of the ``logged_steps`` of the stage."""
    if rank == rank and rank < COLLAPSE_RANK:  # rank == rank: not NaN
        return f"effective rank {rank:.2f} < {COLLAPSE_RANK:g}"
    if logged_steps > 0 and near_chance_steps >= max(1, CHANCE_SHARE * logged_steps):
        return (f"loss within {100 * CHANCE_TOLERANCE:g}% of chance at {near_chance_steps} of "
                f"{logged_steps} logged steps")
    return None
