"""Run profiles shared by the notebooks, the command line and the tests.

``ci``: seconds on 2 CPU cores (tests). ``cpu``: minutes on 2 CPU cores (the rendered book), and the default on a GPU
too, where it is faster still (the chapters load the shipped checkpoints, which were pre-trained at its sizes).
``gpu``: the papers' scale on one GPU; hours per chapter, so it is chosen explicitly (``profile="gpu"``,
``--profile gpu`` or ``GLCL_PROFILE=gpu``).
"""
from __future__ import annotations

import os

PROFILES = ("ci", "cpu", "gpu")


def default_profile() -> str:
    """``GLCL_PROFILE`` if set, else ``cpu`` on any device: paper scale (``gpu``) is never picked for the user."""
    name = os.environ.get("GLCL_PROFILE")
    if name:
        return check_profile(name)
    return "cpu"


def check_profile(name: str) -> str:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return name
