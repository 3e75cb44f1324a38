"""Shared fixtures. The embedded data set is built once per machine into the repository's .cache folder
(unless GLCL_DATA_DIR points elsewhere), so the suite never writes into a user's home cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("GLCL_DATA_DIR", str(ROOT / ".cache" / "glcl_data"))
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def ci_config():
    from glcl_core.train.config import make_config

    return make_config("ci")


@pytest.fixture(scope="session")
def ci_split(ci_config):
    """The embedded data set at ci resolution, split into pool / val / test."""
    from glcl_core.experiment import prepare_split

    return prepare_split(ci_config)
