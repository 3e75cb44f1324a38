"""The Volume: one preprocessed 3D scan, sliced along its acquired slice axis."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DataError(ValueError):
    """Bad input data. The message names the file (or folder) and the problem."""


@dataclass
class Volume:
    """One preprocessed volume.

    Attributes:
        name: identifier, e.g. ``"prostate_00"`` or ``"patient001_frame01"``.
        image: float32 ``(Z, H, W)``, intensity-normalised, slice axis first.
        label: int64 ``(Z, H, W)`` or ``None`` when the volume is unlabelled.
        spacing: ``(z, y, x)`` voxel size in mm after preprocessing.
        source: path of the file the image came from (for error messages and provenance).
        meta: what the loader knows about the volume (subject, original shape/spacing/orientation, and what Dice at
            native resolution needs: ``native_grid``, ``orientation``, maybe ``native_label``; see
            :func:`glcl_core.data.load_volumes`). Empty for volumes built by hand.
    """

    name: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, float, float]
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image.ndim != 3:
            raise DataError(f"{self.source or self.name}: image must be (Z, H, W), got shape {self.image.shape}")
        if self.label is not None and self.label.shape != self.image.shape:
            raise DataError(
                f"{self.source or self.name}: label shape {self.label.shape} != image shape {self.image.shape}"
            )

    @property
    def n_slices(self) -> int:
        return int(self.image.shape[0])

    @property
    def positions(self) -> np.ndarray:
        """``(Z,)`` float64 normalised slice positions ``(k + 1) / Z`` in ``(0, 1]`` (PCL's definition).

        float64, as in PCL's code (``float(i + 1) / Z`` in Python, collated to a float64 tensor): each entry is the
        correctly rounded double of ``(k + 1) / Z``, so PCL's ``|p_i - p_j| < threshold`` resolves the ties of
        ``threshold * Z`` integer exactly as there. float32 positions round differently and flip such pairs.
        """
        z = self.n_slices
        return (np.arange(z, dtype=np.float64) + 1.0) / float(z)

    def partitions(self, n_partitions: int) -> np.ndarray:
        """``(Z,)`` int64 partition index ``0..S-1``: S contiguous parts whose sizes differ by at most one slice."""
        s = int(n_partitions)
        if s < 1:
            raise ValueError(f"n_partitions must be >= 1, got {n_partitions}")
        z = self.n_slices
        if z < s:
            raise DataError(f"{self.source or self.name}: {z} slices cannot be cut into {s} partitions")
        return (np.arange(z, dtype=np.int64) * s) // z

    def __repr__(self) -> str:  # arrays would flood a notebook
        lab = "labelled" if self.label is not None else "unlabelled"
        sp = ", ".join(f"{v:.2f}" for v in self.spacing)
        return f"Volume({self.name!r}, shape={tuple(self.image.shape)}, spacing=({sp}) mm, {lab})"
