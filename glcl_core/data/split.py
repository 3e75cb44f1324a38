"""Splitting volumes into a training pool, validation and test sets, and drawing labelled volumes.

Test volumes are chosen once, by ``split_seed``, and never take part in any choice (no model selection, no tuning).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glcl_core.data.volume import DataError, Volume


@dataclass
class Split:
    pool: list[Volume]  # pre-training images; labelled volumes for fine-tuning are drawn from here
    val: list[Volume]  # model selection during fine-tuning
    test: list[Volume]  # reported Dice only

    def __repr__(self) -> str:
        return f"Split(pool={len(self.pool)}, val={len(self.val)}, test={len(self.test)})"


def subject_of(volume: Volume) -> str:
    """The person a volume was scanned from (``meta["subject"]``, e.g. one ACDC patient's ED and ES frames), or the
    volume's own name when the loader did not say."""
    return str(volume.meta.get("subject") or volume.name)


def split_volumes(volumes: list[Volume], n_test: int, n_val: int, seed: int = 0) -> Split:
    """A fixed random split **by subject**: all volumes of one subject land in the same set, so no test subject is
    seen, even as another frame, in pre-training or fine-tuning. ``n_test`` and ``n_val`` count subjects (the same
    as volumes when every subject has one volume, and then the split is the plain volume split of earlier versions).

    Validation and test sets need labels: a subject with an unlabelled volume always goes to the pool (its images
    still serve pre-training), and the test and validation subjects are drawn from the labelled ones. When every
    volume is labelled this is the same split as before. Raises ValueError when there are too few subjects to keep
    at least one in the pool, and DataError (a ValueError) when fewer labelled subjects exist than
    ``n_test + n_val``."""
    if n_test < 0 or n_val < 0:
        raise ValueError("n_test and n_val must be >= 0")
    subjects = list(dict.fromkeys(subject_of(v) for v in volumes))  # in order of first appearance
    if len(subjects) < n_test + n_val + 1:
        unit = "volumes" if len(subjects) == len(volumes) else f"subjects ({len(volumes)} volumes)"
        raise ValueError(
            f"{len(subjects)} {unit} cannot be split into {n_test} test, {n_val} validation and >= 1 training"
        )
    unlabelled = {subject_of(v) for v in volumes if v.label is None}
    eligible = [i for i, s in enumerate(subjects) if s not in unlabelled]  # may go to validation / test
    if len(eligible) < n_test + n_val:
        unit = "volumes" if len(subjects) == len(volumes) else "subjects"
        n_unlabelled = sum(v.label is None for v in volumes)
        raise DataError(
            f"{len(eligible)} labelled {unit} ({n_unlabelled} of {len(volumes)} volumes have no label), but "
            f"{n_test} test + {n_val} validation = {n_test + n_val} labelled {unit} are needed: unlabelled volumes "
            f"only join the training pool; add labels or lower n_test / n_val (--n-test / --n-val)"
        )
    order = [eligible[i] for i in np.random.default_rng(seed).permutation(len(eligible))]
    held_out = set(order[:n_test + n_val])

    def volumes_of(indices) -> list[Volume]:
        chosen = {subjects[i] for i in indices}
        return [v for v in volumes if subject_of(v) in chosen]  # the input order, as before

    pool = [i for i in range(len(subjects)) if i not in held_out]
    return Split(pool=volumes_of(pool), val=volumes_of(order[n_test:n_test + n_val]),
                 test=volumes_of(order[:n_test]))


def draw_labelled(pool: list[Volume], n: int, seed: int) -> list[Volume]:
    """``n`` labelled volumes from the pool, a different draw for each seed (the papers' repeated draws)."""
    candidates = [v for v in pool if v.label is not None]
    if n < 1 or n > len(candidates):
        raise ValueError(f"cannot draw {n} labelled volumes from {len(candidates)} labelled in the pool")
    order = np.random.default_rng(10_007 + seed).permutation(len(candidates))
    return [candidates[i] for i in sorted(order[:n])]
