"""Every glcl_core name the README and the chapters use can be imported from where they import it.

The package layout may change; what readers copy from the README or a chapter must not. The statements are read
with ``ast`` (not executed), then each imported name is looked up, and so is every attribute the chapter reads
through a module it imported (``la.region_similarity`` after ``from glcl_core.analysis import local_maps as la``).
"""
from __future__ import annotations

import ast
import importlib
import json
import re
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("*.ipynb"))


def _chapter_code(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        for line in "".join(cell["source"]).splitlines():
            # IPython magics and shell escapes are not Python; blank them, keeping the indentation valid
            lines.append("" if line.lstrip().startswith(("%", "!")) else line)
        lines.append("")
    return "\n".join(lines)


def _readme_code() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    # one-liners in shell blocks: python -c "..." with glcl_core imports
    blocks += [m.replace("\\\n", "") for m in re.findall(r'python -c "(.*?)"', text, flags=re.S)]
    return "\n\n".join(blocks)


def _uses(code: str, where: str) -> list[tuple[str, str]]:
    """(description, dotted lookup) for every glcl_core import and module-attribute read in ``code``."""
    tree = ast.parse(code, filename=where)
    lookups: list[tuple[str, str]] = []
    modules: dict[str, str] = {}  # local name -> dotted path of what it was bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "glcl_core":
            for alias in node.names:
                lookups.append((f"from {node.module} import {alias.name}", f"{node.module}:{alias.name}"))
                modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "glcl_core":
                    lookups.append((f"import {alias.name}", f"{alias.name}:"))
                    if alias.asname:
                        modules[alias.asname] = alias.name
                    else:
                        modules["glcl_core"] = "glcl_core"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            lookups.append((f"{node.value.id}.{node.attr}", f"{modules[node.value.id]}.{node.attr}"))
    return lookups


def _resolve(dotted: str) -> object:
    """Import ``pkg.mod:name`` / ``pkg.mod:`` / ``pkg.mod.name`` (attribute of a module, or a submodule)."""
    module_path, _, name = dotted.partition(":") if ":" in dotted else (dotted, "", "")
    if ":" not in dotted:  # attribute read through an alias: walk the dots from the longest importable module
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj: object = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attr in parts[cut:]:
                obj = _attribute(obj, attr)
            return obj
        raise ModuleNotFoundError(dotted)
    module = importlib.import_module(module_path)
    return _attribute(module, name) if name else module


def _attribute(obj: object, attr: str) -> object:
    if hasattr(obj, attr):
        return getattr(obj, attr)
    if isinstance(obj, types.ModuleType):  # a submodule not imported by its package yet
        return importlib.import_module(f"{obj.__name__}.{attr}")
    raise AttributeError(f"{obj!r} has no attribute {attr!r}")


def _prose_references(text: str) -> list[tuple[str, str]]:
    """Dotted names in inline code such as `glcl_core.contrastive.kernel.masked_info_nce` (a call's brackets
    dropped)."""
    return [(name, name) for name in re.findall(r"`(glcl_core(?:\.\w+)+)(?:\([^`]*\))?`", text)]


def _chapter_prose(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def _cases():
    for path in CHAPTERS:
        yield pytest.param(path.name, _chapter_code(path), _chapter_prose(path), id=path.stem)
    yield pytest.param("README.md", _readme_code(), (ROOT / "README.md").read_text(), id="README")


def _unresolved(uses: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (description, error) of every use that does not import."""
    missing = []
    for description, dotted in uses:
        try:
            _resolve(dotted)
        except (ImportError, AttributeError) as err:
            missing.append((description, str(err)))
    return missing


@pytest.mark.parametrize("where, code, prose", list(_cases()))
def test_every_glcl_core_name_used_imports(where, code, prose):
    uses = _uses(code, where) + _prose_references(prose)
    if where != "README.md":
        assert uses, f"{where}: no glcl_core import found (the parser missed them?)"
    missing = _unresolved(uses)
    assert not missing, f"{where}: names that no longer import:\n" + "\n".join(f"{d}: {e}" for d, e in missing)


def test_the_check_catches_a_missing_name():
    missing = _unresolved(_uses("from glcl_core.data import load_volumes, no_such_name\n", "t"))
    assert [d for d, _ in missing] == ["from glcl_core.data import no_such_name"]


def test_the_check_reads_names_in_prose():
    refs = _prose_references("see `glcl_core.data.load_volumes(path)` and `glcl_core.data.nope`; not glcl_core.x")
    assert refs == [("glcl_core.data.load_volumes", "glcl_core.data.load_volumes"),
                    ("glcl_core.data.nope", "glcl_core.data.nope")]
    assert [d for d, _ in _unresolved(refs)] == ["glcl_core.data.nope"]


def test_the_check_catches_a_missing_attribute_through_an_alias():
    missing = _unresolved(_uses("from glcl_core.viz import volumes as vv\nvv.plot_volume\nvv.not_there\n", "t"))
    assert [d for d, _ in missing] == ["vv.not_there"]


def test_readme_where_things_live_matches_the_tree():
    """Every path in the README's table exists, every package and top-level module of glcl_core is in it, and the
    modules named in a folder's row are files of that folder."""
    text = (ROOT / "README.md").read_text()
    table = text.split("## Where things live", 1)[1].split("\n\n")[2]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| `")]
    assert rows, "no table found under 'Where things live'"
    listed: set[Path] = set()
    for where, job in rows:
        paths = re.findall(r"`([^`]+)`", where)
        base = ROOT / paths[0]
        for name in paths:  # the first path is from the root; later bare names sit beside it
            path = base if name == paths[0] else base.parent / name
            assert path.exists(), f"README 'Where things live' names {name}, which does not exist"
            listed.add(path.resolve())
        if base.is_dir() and base.parent.name == "glcl_core":
            for module in re.findall(r"`(\w+\.py)`", job):
                assert (base / module).exists(), f"README: {paths[0]} has no {module}"
    package = ROOT / "glcl_core"
    parts = [p for p in package.iterdir()
             if not p.name.startswith(("_", ".")) and (p.suffix == ".py" or p.is_dir())]
    missing = sorted(p.name for p in parts if p.resolve() not in listed)
    assert not missing, f"not in the README's 'Where things live' table: {missing}"
