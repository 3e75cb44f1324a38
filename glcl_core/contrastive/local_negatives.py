"""Negatives of the local loss: which regions of a map contrast with each region (a table of region indices).
The official hand-picked table (sparse form only), a fixed random draw of regions, or every other region.
"""
from __future__ import annotations

import torch

from glcl_core.contrastive.regions import LOCAL_FORMS, SPARSE_LATTICE, official_negative_regions

SPARSE_NEGATIVES = 10  # official L^R: 5 hand-picked other regions x 2 views (also the default random draw)
LOCAL_NEGATIVES = ("official", "random", "all")  # hand-picked table (sparse) | fixed random draw | every other region
LD_NEGATIVE_REGIONS = 4  # official L^D: the first 4 of the 5 listed regions per map (cut "due to memory issues")
_DEFAULT_SEED = 0  # fixed draw of sparse/sampled negatives when no generator is given (like the hand-picked ones)

__all__ = ["SPARSE_NEGATIVES", "LOCAL_NEGATIVES", "LD_NEGATIVE_REGIONS", "resolve_local_negatives"]


def resolve_local_negatives(form: str, negatives: str | None = None, n_negatives: int | None = None) -> str:
    """Which negatives a local loss uses, one of :data:`LOCAL_NEGATIVES`.

    ``negatives=None`` picks: ``"random"`` if ``n_negatives`` is given (the behaviour before the official table
    existed), else ``"official"`` for the sparse form and ``"all"`` for the dense form (the official code has no
    dense form). ``"official"`` exists for the sparse form only; ``n_negatives`` only goes with ``"random"``.
    """
    if form not in LOCAL_FORMS:
        raise ValueError(f"unknown local form {form!r}; valid: {', '.join(LOCAL_FORMS)}")
    if negatives is None:
        if n_negatives is not None:
            return "random"
        return "official" if form == "sparse" else "all"
    if negatives not in LOCAL_NEGATIVES:
        raise ValueError(f"unknown local negatives {negatives!r}; valid: {', '.join(LOCAL_NEGATIVES)}")
    if negatives == "official" and form != "sparse":
        raise ValueError("the official hand-picked negatives exist for the sparse form only; use 'all' or 'random'")
    if negatives != "random" and n_negatives is not None:
        raise ValueError(f"n_negatives={n_negatives!r} only applies to negatives='random', got {negatives!r}")
    return negatives


def _negative_table(
    strategy: str,
    n_regions: int,
    negatives: str,
    n_negatives: int | None,
    generator: torch.Generator | None,
    region_size: int,
    ld_negative_regions: int,
    device: torch.device,
) -> tuple[torch.Tensor, int]:
    """``(table, n_total)``: ``table (R, k)`` int64, row ``r`` = the regions (indices into ``n_total`` pooled
    regions per map) whose embeddings are negatives of region ``r``, in each of the two maps concerned."""
    r = int(n_regions)
    if negatives == "official":
        if r != len(SPARSE_LATTICE):
            raise ValueError(f"the official negatives are defined for the {len(SPARSE_LATTICE)} sparse regions, "
                             f"got {n_regions} regions")
        table = official_negative_regions(region_size)
        n_total = max(r, int(table.max()) + 1)  # 17 with the 3x3 table (4 negative-only positions), 13 with 1x1
        if strategy == "LD":
            k = ld_negative_regions
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= table.shape[1]:
                raise ValueError(f"ld_negative_regions must be an int in [1, {table.shape[1]}], got {k!r}")
            table = table[:, :k]  # the official L^D keeps the first 4 of the 5 listed
        return table.to(device), n_total
    if negatives == "all":
        others = ~torch.eye(r, dtype=torch.bool)
        return torch.arange(r).expand(r, r)[others].reshape(r, r - 1).to(device), r
    if n_negatives is None:
        n_negatives = SPARSE_NEGATIVES
    if isinstance(n_negatives, bool) or not isinstance(n_negatives, int) or n_negatives < 2 or n_negatives % 2:
        raise ValueError(
            "n_negatives counts negatives per anchor over both views (official: 5 regions x 2 views = 10); "
            f"it must be an even int >= 2, got {n_negatives!r}"
        )
    k = n_negatives // 2
    if k > r - 1:
        raise ValueError(f"n_negatives={n_negatives} needs {k} other regions, but a map has only {r - 1}")
    if generator is None:
        generator = torch.Generator().manual_seed(_DEFAULT_SEED)
    scores = torch.rand((r, r), generator=generator, device=generator.device)
    scores.fill_diagonal_(2.0)  # never draw the region itself
    return scores.topk(k, dim=1, largest=False).indices.to(device), r  # (R, k) other regions per region
