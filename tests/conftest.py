"""Shared fixtures. The embedded data set is built once per machine into the repository's .cache folder
(unless GLCL_DATA_DIR points elsewhere), so the suite never writes into a user's home cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GLCL_DATA_DIR", str(ROOT / ".cache" / "glcl_data"))
os.environ.setdefault("MPLBACKEND", "Agg")

# seconds per chapter in the ci profile, filled by tests/test_book.py and printed at the end of the run
CHAPTER_SECONDS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter):
    if CHAPTER_SECONDS:
        terminalreporter.write_sep("-", "chapter wall times (ci profile)")
        for name, seconds in sorted(CHAPTER_SECONDS.items()):
            terminalreporter.write_line(f"{name:32s} {seconds:7.1f} s")


@pytest.fixture(scope="session")
def ci_config():
    from glcl_core.train.config import make_config

    return make_config("ci")


@pytest.fixture(scope="session")
def ci_split(ci_config):
    """The embedded data set at ci resolution, split into pool / val / test."""
    from glcl_core.experiment import prepare_split

    return prepare_split(ci_config)


def pytest_generate_tests(metafunc):
    """A test that takes ``accelerator`` runs once per CUDA / MPS device present (skipped on a CPU-only machine)."""
    if "accelerator" in metafunc.fixturenames:
        devices = [kind for kind, present in (("cuda", torch.cuda.is_available()),
                                              ("mps", getattr(torch.backends, "mps", None) is not None
                                               and torch.backends.mps.is_available())) if present]
        metafunc.parametrize("accelerator", devices
                             or [pytest.param("none", marks=pytest.mark.skip(reason="no CUDA/MPS device"))])
