"""Device choice and mixed precision, in one place: nothing else names a device."""
from __future__ import annotations

import os

import torch


def default_device() -> torch.device:
    """CUDA if present, then Apple MPS, then CPU. ``GLCL_DEVICE`` overrides (e.g. ``cpu``, ``cuda:1``)."""
    forced = os.environ.get("GLCL_DEVICE")
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for a device: bf16 on GPUs that compute it natively (compute capability 8 and up),
    fp16 (with loss scaling) on older GPUs such as Colab's T4, None (full fp32) on CPU. ``is_bf16_supported()``
    alone would also accept bf16 emulated in software on a T4, which runs without tensor cores."""
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 and torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None
