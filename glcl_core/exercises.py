"""Checks for the exercises in which students write the method: a mask builder or the loss, in plain PyTorch.

Each ``check_*`` function calls the student's function and the library's on random batches of several sizes, and
prints one line: ``PASS`` with what was compared, or ``FAIL`` with the first mismatch (which entry, the metadata
that decides it, what was expected and what was given). It also returns a :class:`CheckResult`, which is true
when the check passed, so the book's tests can assert on it.

The functions the students write:

* ``global_masks(image, volume, partition, position) -> (positives, negatives)`` for one global strategy
  (``check_global_masks``): ``(N,)`` metadata in, two ``(N, N)`` bool masks out, diagonals False;
* ``info_nce(z, positives, negatives, temperature) -> loss`` (``check_info_nce``): GLCL's reduction, the mean over
  positive pairs;
* ``local_masks(image, n_regions) -> (positives, negatives)`` for L^R with every other region of the same slice as
  a negative (``check_local_masks``): ``(2 B T, 2 B T)`` masks over the regions of both views of ``B`` slices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from glcl_core.contrastive.global_masks import global_masks
from glcl_core.contrastive.kernel import masked_info_nce
from glcl_core.contrastive.local_masks import local_masks


@dataclass
class CheckResult:
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def _ipython_display_(self) -> None:
        """The check already printed its line; a notebook cell ending in the check shows it once."""


def _report(result: CheckResult, quiet: bool) -> CheckResult:
    if not quiet:
        print(result.message)
    return result


def random_global_batch(n_volumes: int, n_partitions: int, n_views: int = 2, seed: int = 0,
                        slices_per_partition: int = 1) -> dict[str, torch.Tensor]:
    """``(N,)`` metadata of a batch as the partition sampler draws it: ``n_volumes`` volumes, ``slices_per_partition``
    slices from each of their ``n_partitions`` partitions, each slice in ``n_views`` views (rows ordered view-major).
    Positions are drawn inside each slice's partition."""
    g = torch.Generator().manual_seed(seed)
    volume = torch.arange(n_volumes).repeat_interleave(n_partitions * slices_per_partition)
    partition = torch.arange(n_partitions).repeat_interleave(slices_per_partition).repeat(n_volumes)
    position = ((partition + torch.rand(len(partition), generator=g, dtype=torch.float64)) / n_partitions)
    image = torch.arange(len(volume))
    return {"image": image.repeat(n_views), "volume": volume.repeat(n_views),
            "partition": partition.repeat(n_views), "position": position.repeat(n_views)}


def _first_mismatch(name: str, expected: torch.Tensor, given: torch.Tensor, meta: dict[str, torch.Tensor]) -> str:
    i, j = (expected != given).nonzero()[0].tolist()

    def row(k: int) -> str:
        return ", ".join(f"{key} {float(v[k]):.3f}" if key == "position" else f"{key} {int(v[k])}"
                         for key, v in meta.items())

    return (f"{name}[{i}, {j}] should be {bool(expected[i, j])}, is {bool(given[i, j])} "
            f"(row {i}: {row(i)}; column {j}: {row(j)})")


def _as_bool_masks(out, n: int, what: str) -> tuple[torch.Tensor, torch.Tensor] | str:
    if not isinstance(out, tuple) or len(out) != 2:
        return f"{what} must return a tuple (positives, negatives), got {type(out).__name__}"
    for name, m in zip(("positives", "negatives"), out):
        if not isinstance(m, torch.Tensor) or m.dtype != torch.bool or tuple(m.shape) != (n, n):
            shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            dtype = getattr(m, "dtype", None)
            return f"{name} must be a ({n}, {n}) bool tensor, got {shape} {dtype}"
    return out


def check_global_masks(fn: Callable, strategy: str, threshold: float = 0.1, quiet: bool = False) -> CheckResult:
    """Compare ``fn(image, volume, partition, position)`` with
    :func:`glcl_core.contrastive.global_masks.global_masks` for ``strategy`` (``"GR"``, ``"GD-"``, ``"GD"`` or
    ``"PCL"`` with ``threshold``) on batches of 2 to 5 volumes."""
    cases = [(2, 4, 0), (3, 4, 1), (5, 3, 2), (4, 2, 3)]
    for n_volumes, n_partitions, seed in cases:
        meta = random_global_batch(n_volumes, n_partitions, seed=seed)
        expected = global_masks(strategy, meta["image"], meta["volume"], meta["partition"], meta["position"],
                                threshold=threshold)
        n = len(meta["image"])
        given = _as_bool_masks(fn(meta["image"], meta["volume"], meta["partition"], meta["position"]), n,
                               "your function")
        if isinstance(given, str):
            return _report(CheckResult(False, f"FAIL ({strategy}): {given}"), quiet)
        for name, e, m in zip(("positives", "negatives"), expected, given):
            if not torch.equal(e, m):
                return _report(CheckResult(False, f"FAIL ({strategy}, {n_volumes} volumes x {n_partitions} "
                                                  f"partitions x 2 views): {_first_mismatch(name, e, m, meta)}"),
                               quiet)
    return _report(CheckResult(True, f"PASS ({strategy}): both masks equal the library's on {len(cases)} batches "
                                     f"of 16 to 30 embeddings"), quiet)


def check_info_nce(fn: Callable, quiet: bool = False, atol: float = 1e-5) -> CheckResult:
    """Compare ``fn(z, positives, negatives, temperature)`` with :func:`glcl_core.contrastive.kernel.masked_info_nce`
    (reduction ``"pairs"``, GLCL's) on G^D and PCL masks of random embeddings, at two temperatures."""
    cases = 0
    for seed, (strategy, temperature) in enumerate([("GD", 0.1), ("PCL", 0.5), ("GD-", 0.1), ("GR", 1.0)]):
        meta = random_global_batch(3, 4, seed=seed)
        pos, neg = global_masks(strategy, meta["image"], meta["volume"], meta["partition"], meta["position"],
                                threshold=0.2)
        z = torch.randn(len(meta["image"]), 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        expected = float(masked_info_nce(z, pos, neg, temperature, reduction="pairs"))
        try:
            given = float(fn(z.clone(), pos.clone(), neg.clone(), temperature))
        except Exception as err:  # noqa: BLE001 - the student's code may fail in any way; say how
            return _report(CheckResult(False, f"FAIL: your function raised {type(err).__name__}: {err}"), quiet)
        cases += 1
        if not abs(given - expected) <= atol * max(1.0, abs(expected)):
            return _report(CheckResult(False, f"FAIL ({strategy} masks, temperature {temperature}, z {tuple(z.shape)}):"
                                              f" expected {expected:.6f}, got {given:.6f}"), quiet)
    return _report(CheckResult(True, f"PASS: the loss equals the library's on {cases} batches (G^R, G^D-, G^D, PCL "
                                     f"masks; temperatures 0.1 to 1)"), quiet)


def check_local_masks(fn: Callable, quiet: bool = False) -> CheckResult:
    """Compare ``fn(image, n_regions)`` with the library's L^R masks with every other region of the same slice as a
    negative (``local_masks("LR", ..., negatives="all")`` as dense ``(2 B T, 2 B T)`` matrices; rows ordered
    slice, then view, then region). The diagonal is ignored (no pair of an embedding with itself)."""
    cases = [(2, 4), (3, 5), (1, 13)]
    for b, t in cases:
        image = torch.arange(b)
        pos, neg = (m.to_dense() for m in local_masks("LR", image, image, torch.zeros(b, dtype=torch.long), t,
                                                      negatives="all"))
        n = 2 * b * t
        off = ~torch.eye(n, dtype=torch.bool)
        given = _as_bool_masks(fn(image, t), n, "your function")
        if isinstance(given, str):
            return _report(CheckResult(False, f"FAIL: {given}"), quiet)
        q = torch.arange(n)
        meta = {"slice": q // (2 * t), "view": (q // t) % 2, "region": q % t}
        for name, e, m in zip(("positives", "negatives"), (pos & off, neg & off), given):
            if not torch.equal(e, m & off):
                return _report(CheckResult(False, f"FAIL ({b} slices x 2 views x {t} regions): "
                                                  f"{_first_mismatch(name, e, m & off, meta)}"), quiet)
    return _report(CheckResult(True, f"PASS: both masks equal the library's for {len(cases)} batch shapes"), quiet)
