"""The batch contract: what flows from samplers through augmentation to the model and the loss."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


def to_device(t: torch.Tensor, device: torch.device | str, non_blocking: bool = False) -> torch.Tensor:
    """``t`` on ``device``; a float64 tensor (slice positions) stays on the CPU when the device has no float64
    (Apple MPS). The PCL mask is then computed on the CPU and only the boolean mask moves."""
    device = torch.device(device)
    if t.dtype == torch.float64 and device.type == "mps":
        return t.cpu()
    return t.to(device, non_blocking=non_blocking)


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
        position: ``(B,)`` float64 normalised slice position ``(k + 1) / Z`` in ``(0, 1]`` (float64 as in PCL's
            code, so its threshold ties resolve the same way; on Apple MPS, which has no float64, it stays on
            the CPU: see :func:`to_device`).
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
            f.name: (None if getattr(self, f.name) is None else to_device(getattr(self, f.name), device, non_blocking))
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
