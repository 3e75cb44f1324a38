"""The batch contract: what flows from samplers through augmentation to the model and the loss."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class Batch:
    """A batch of 2D slices and their metadata, all on one device.

    Views of the same slice are concatenated along the first axis and share ``image``.

    Attributes:
        images: ``(B, 1, H, W)`` float32.
        labels: ``(B, H, W)`` int64, or ``None`` for unlabelled batches.
        image: ``(B,)`` int64 id of the source slice (two views of one slice share it).
        volume: ``(B,)`` int64 volume index.
        partition: ``(B,)`` int64 partition index within the volume (``-1`` if not drawn by partition).
        position: ``(B,)`` float32 normalised slice position in ``(0, 1]``.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    image: torch.Tensor
    volume: torch.Tensor
    partition: torch.Tensor
    position: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        moved = {
            f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device, non_blocking=non_blocking))
            for f in fields(self)
        }
        return Batch(**moved)

    def with_images(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> "Batch":
        """Same metadata, new pixels (e.g. after augmentation)."""
        return replace(self, images=images, labels=labels if labels is not None else self.labels)

    @staticmethod
    def cat(batches: list["Batch"]) -> "Batch":
        """Concatenate along the first axis (e.g. two views)."""
        out = {}
        for f in fields(Batch):
            vals = [getattr(b, f.name) for b in batches]
            out[f.name] = None if any(v is None for v in vals) else torch.cat(vals, dim=0)
        return Batch(**out)
