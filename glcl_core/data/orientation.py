"""Canonical orientation of one scan: the transpose and flips that bring a stored array into ``(Z, H, W)``.

Orientation convention (the output array is ``(Z, H, W)``, slice axis first):

* The slice axis is the *acquired* one: the axis with the coarsest voxel size. When several axes are within a
  factor ``1.2`` of the coarsest (near-isotropic data), the one closest to the superior-inferior world axis wins.
  Axes are never resampled into a different plane: we only transpose and flip, so oblique thick-slice stacks
  (cardiac short axis) keep their slices.
* Each array axis is matched to the world axis (RAS+ : x = left->Right, y = posterior->Anterior,
  z = inferior->Superior) it is most aligned with.
* Slice index increases toward **Superior** for axial stacks, **Posterior** for coronal, **Right** for sagittal.
  These three agree with the apex->base direction of the heart, so oblique short-axis stacks come out in the same
  order whichever world axis dominates. The sign is taken from the dot product with a reference vector that
  weights the dominant axis 1 and the two others 0.5, which keeps the choice stable near 45 degree obliquity.
* In-plane axes follow the radiological display convention: rows (H) take the "most vertical" remaining world
  axis (S/I before A/P before R/L) and run toward Inferior / Posterior; columns (W) run toward the patient's
  Left / Posterior. An axial slice is shown with anterior at the top and the patient's right on the left.

:func:`canonical_orientation` finds the layout from the affine, :func:`reorient` applies it to an array (a view)
and :func:`reoriented_affine` gives the affine of the result. Resampling and intensity come next, in
:mod:`glcl_core.data.preprocess`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glcl_core.data.volume import DataError

ISOTROPY_TOLERANCE = 1.2  # axes within this factor of the coarsest count as "equally coarse"
SLICE_TARGET_SIGN = np.array([+1.0, -1.0, +1.0])  # RAS sign the slice axis runs toward: Right, Posterior, Superior
INPLANE_TARGET_SIGN = np.array([-1.0, -1.0, -1.0])  # rows/cols run toward Left, Posterior, Inferior
DISPLAY_PRIORITY = (2, 1, 0)  # world axis preferred for rows: S/I, then A/P, then R/L


@dataclass(frozen=True)
class Orientation:
    """How to turn a stored array into the canonical ``(Z, H, W)`` layout.

    Attributes:
        order: stored axes in output order (slice, row, column).
        flip: per output axis, whether to reverse it (after transposing).
        spacing: ``(z, y, x)`` voxel size in mm in output order.
        world_axes: RAS world axis (0 x, 1 y, 2 z) each output axis is matched to.
    """

    order: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    spacing: tuple[float, float, float]
    world_axes: tuple[int, int, int]


def voxel_directions(affine: np.ndarray, source: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Voxel sizes ``(3,)`` in mm and unit direction columns ``(3, 3)`` (world x array axis) of a 4x4 affine."""
    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    if not np.all(np.isfinite(linear)):
        raise DataError(f"{source}: affine has non-finite entries")
    sizes = np.round(np.linalg.norm(linear, axis=0), 6)  # drop float noise of rotated affines (stable resampling)
    if np.any(sizes <= 1e-6) or abs(np.linalg.det(linear)) <= 1e-9 * float(np.prod(sizes)):
        raise DataError(f"{source}: degenerate affine (zero voxel size or collinear axes):\n{np.round(affine, 4)}")
    return sizes, linear / sizes


def find_slice_axis(sizes: np.ndarray, directions: np.ndarray) -> int:
    """Stored axis holding the acquired slices: the coarsest, ties broken by alignment with superior-inferior."""
    coarse = [a for a in range(3) if sizes[a] * ISOTROPY_TOLERANCE >= sizes.max()]
    if len(coarse) == 1:
        return coarse[0]
    return max(coarse, key=lambda a: abs(directions[2, a]))


def canonical_orientation(affine: np.ndarray, source: str = "") -> Orientation:
    """The transpose + flips that bring a stored array into the canonical ``(Z, H, W)`` layout (module docstring)."""
    sizes, directions = voxel_directions(affine, source)
    slice_axis = find_slice_axis(sizes, directions)
    slice_world = int(np.argmax(np.abs(directions[:, slice_axis])))

    # Slice direction: dot with a reference that favours the dominant world axis (stable for oblique stacks).
    reference = SLICE_TARGET_SIGN * 0.5
    reference[slice_world] = SLICE_TARGET_SIGN[slice_world]
    flip_slices = float(directions[:, slice_axis] @ reference) < 0

    # In-plane: match the two remaining stored axes to the two remaining world axes (best total alignment).
    a, b = [ax for ax in range(3) if ax != slice_axis]
    w1, w2 = [w for w in range(3) if w != slice_world]
    straight = abs(directions[w1, a]) + abs(directions[w2, b])
    crossed = abs(directions[w2, a]) + abs(directions[w1, b])
    match = {a: w1, b: w2} if straight >= crossed else {a: w2, b: w1}
    row_axis, col_axis = sorted((a, b), key=lambda ax: DISPLAY_PRIORITY.index(match[ax]))
    flip_rows = directions[match[row_axis], row_axis] * INPLANE_TARGET_SIGN[match[row_axis]] < 0
    flip_cols = directions[match[col_axis], col_axis] * INPLANE_TARGET_SIGN[match[col_axis]] < 0

    order = (slice_axis, row_axis, col_axis)
    return Orientation(
        order=order,
        flip=(bool(flip_slices), bool(flip_rows), bool(flip_cols)),
        spacing=tuple(float(sizes[ax]) for ax in order),
        world_axes=(slice_world, match[row_axis], match[col_axis]),
    )


def reorient(array: np.ndarray, orientation: Orientation) -> np.ndarray:
    """A view of a stored 3D ``array`` in canonical ``(Z, H, W)`` order (no copy)."""
    view = np.transpose(array, orientation.order)
    steps = tuple(slice(None, None, -1) if f else slice(None) for f in orientation.flip)
    return view[steps]


def reoriented_affine(affine: np.ndarray, shape: tuple[int, ...], orientation: Orientation) -> np.ndarray:
    """4x4 affine of the canonical array (index ``(z, y, x)`` -> world mm), for provenance and tests."""
    affine = np.asarray(affine, dtype=np.float64)
    out = np.eye(4)
    out[:3, 3] = affine[:3, 3]
    for new_ax, (old_ax, flipped) in enumerate(zip(orientation.order, orientation.flip)):
        column = affine[:3, old_ax]
        if flipped:
            out[:3, 3] += column * (shape[old_ax] - 1)
            column = -column
        out[:3, new_ax] = column
    return out
