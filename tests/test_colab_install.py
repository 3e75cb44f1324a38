"""The chapters' Colab opening, offline: what the install cell does there, and that the package it installs (a
wheel built from this repository, not an editable install) carries everything the chapters import and load."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import chapters  # noqa: E402

from glcl_core import REPOSITORY  # noqa: E402


def _install_cells() -> dict[str, str]:
    cells = {}
    for path in chapters.chapters():
        nb = json.loads(path.read_text())
        found = [c for c in nb["cells"] if "install" in c.get("metadata", {}).get("tags", [])]
        assert len(found) == 1, f"{path.name}: one install cell expected"
        cells[path.name] = "".join(found[0]["source"])
    return cells


def test_every_chapter_opens_with_the_same_install_cell():
    assert set(_install_cells().values()) == {chapters.INSTALL_SOURCE}


def test_install_cell_does_nothing_outside_colab(monkeypatch):
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: ran.append(a))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(chapters.INSTALL_SOURCE, {})
    assert ran == []


def test_install_cell_on_colab_clones_installs_the_book_extra_and_moves_to_the_book(monkeypatch):
    import os

    commands, moves = [], []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: commands.append((cmd, kw)))
    monkeypatch.setattr(os, "chdir", moves.append)
    monkeypatch.setattr(os.path, "isdir", lambda p: False)  # a fresh runtime: no copy yet
    exec(chapters.INSTALL_SOURCE, {})
    (clone, clone_kw), (pip, pip_kw) = commands
    assert clone[:2] == ["git", "clone"] and clone[-2:] == [f"https://github.com/{REPOSITORY}", "/content/glcl-book"]
    assert pip[:4] == [sys.executable, "-m", "pip", "install"] and pip[-1] == "/content/glcl-book[book]"
    assert clone_kw.get("check") and pip_kw.get("check")  # a failed clone or install stops the chapter
    assert moves == ["/content/glcl-book/book"]
    # a second run of the cell (the copy is there) installs again but does not clone again
    commands.clear()
    monkeypatch.setattr(os.path, "isdir", lambda p: p == "/content/glcl-book")
    exec(chapters.INSTALL_SOURCE, {})
    assert [c[0][:2] for c in commands] == [[sys.executable, "-m"]]


def test_pyproject_keeps_colab_torch_and_names_the_book_extra():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = [d for d in project["dependencies"] if re.match(r"torch\b", d)]
    # a range, never a pin: pip then keeps the CUDA torch Colab has installed
    assert torch_req and "==" not in torch_req[0] and ">=" in torch_req[0]
    book = {re.split(r"[<>=!~ ]", d)[0] for d in project["optional-dependencies"]["book"]}
    assert {"ipywidgets", "umap-learn"} <= book


def _chapter_imports() -> set[str]:
    """Every ``glcl_core`` module the chapters import (``from glcl_core.x import y`` / ``import glcl_core.x``)."""
    modules = set()
    for path in chapters.chapters():
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            modules |= set(re.findall(r"^\s*from (glcl_core[\w.]*) import", source, re.M))
            modules |= set(re.findall(r"^\s*import (glcl_core[\w.]*)", source, re.M))
    return modules


@pytest.mark.slow
def test_the_installed_package_carries_what_the_chapters_import_and_load(tmp_path):
    """Colab installs the clone with pip (a built wheel, not the source tree): every module the chapters import and
    every shipped checkpoint must come with it, and the chapters' folder must see ../results."""
    source = tmp_path / "src"  # built from a copy: pip's in-tree build leaves build/ behind
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "glcl_core", source / "glcl_core", ignore=shutil.ignore_patterns("__pycache__"))
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels),
                    str(source)], check=True, capture_output=True)
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site),
                    *map(str, wheels.glob("*.whl"))], check=True, capture_output=True)
    modules = sorted(_chapter_imports())
    assert "glcl_core.book" in modules and len(modules) >= 5
    probe = f"""
import importlib, json, sys
from pathlib import Path
for name in {modules!r}:
    importlib.import_module(name)
import glcl_core
from glcl_core import checkpoints
assert Path(glcl_core.__file__).is_relative_to({str(site)!r}), glcl_core.__file__
names = checkpoints.available()
for name in names:
    checkpoints.load_pretrained(name)  # checks the SHA-256 of the installed file
print(json.dumps(sorted(names)))
"""
    # the chapters' working directory on Colab is the clone's book/ folder; its ../results is the clone's
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT / "book", capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path),
                               "MPLBACKEND": "Agg", "NUMBA_CACHE_DIR": str(tmp_path / "numba")}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    installed = json.loads(done.stdout.strip().splitlines()[-1])
    shipped = json.loads((ROOT / "glcl_core" / "pretrained" / "manifest.json").read_text())
    assert installed == sorted(shipped) and len(installed) == 7
    assert (ROOT / "book" / ".." / "results").is_dir()
