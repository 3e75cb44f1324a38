"""Run profiles shared by the notebooks, the command line and the tests.

``ci``: seconds on 2 CPU cores (tests). ``cpu``: minutes on 2 CPU cores (the rendered book).
``gpu``: the papers' scale on one GPU (Colab).
"""
from __future__ import annotations

import os

import torch

PROFILES = ("ci", "cpu", "gpu")


def default_profile() -> str:
    """``GLCL_PROFILE`` if set, else ``gpu`` when CUDA is present, else ``cpu``."""
    name = os.environ.get("GLCL_PROFILE")
    if name:
        return check_profile(name)
    return "gpu" if torch.cuda.is_available() else "cpu"


def check_profile(name: str) -> str:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return name
