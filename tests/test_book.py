"""The book: chapter structure, every chapter executed (ci profile), the HTML built with -W and checked offline
in headless Chromium (math typeset, figures present, widgets rendered)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import chapters  # noqa: E402
from conftest import CHAPTER_SECONDS  # noqa: E402

CHAPTERS = chapters.chapters()
TOC = (ROOT / "_toc.yml").read_text()


def test_every_chapter_listed_in_toc_and_present():
    listed = re.findall(r"file:\s*(book/\S+)", TOC)
    assert len(CHAPTERS) == 7, [p.name for p in CHAPTERS]
    pages = ["book/notation"]  # reference pages (markdown) after the chapters
    assert sorted(listed) == sorted([f"book/{p.stem}" for p in CHAPTERS] + pages)
    assert all((ROOT / f"{page}.md").exists() for page in pages)
    assert (ROOT / "book" / "intro.md").exists()


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_structure(path):
    assert chapters.check(path) == []


def test_chapter_parameters_may_add_lines_but_keep_the_shared_ones(tmp_path):
    path = tmp_path / "07_x.ipynb"
    chapters.new(path, title="Chapter 7: X", summary="One line.")
    nb = json.loads(path.read_text())
    nb["cells"].insert(5, {"cell_type": "markdown", "metadata": {}, "source": "## Exercise"})
    path.write_text(json.dumps(nb))
    problems = chapters.check(path)
    assert any("lacks objectives, prerequisites, reading_minutes" in p for p in problems), problems
    assert any("Takeaways" in p for p in problems), problems
    nb["metadata"]["glcl"].update(objectives=["do x;"], prerequisites="Chapter 1.", reading_minutes=10)
    nb["cells"].insert(5, {"cell_type": "markdown", "metadata": {}, "source": "```{admonition} Takeaways\n* x\n```"})
    path.write_text(json.dumps(nb))
    assert any("course box" in p for p in chapters.check(path))  # cell 0 must be rewritten from the metadata
    chapters.refresh_opening(path)
    assert chapters.check(path) == []
    nb = json.loads(path.read_text())
    nb["metadata"]["glcl"]["parameters"] = "retrain = False  # True: pre-train here"
    path.write_text(json.dumps(nb))
    assert any("cell 3 is not the standard parameters cell" in p for p in chapters.check(path))
    chapters.refresh_opening(path)  # writes the chapter's own line under the shared ones
    assert chapters.check(path) == []
    assert "".join(json.loads(path.read_text())["cells"][3]["source"]).endswith(
        "retrain = False  # True: pre-train here")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_committed_with_outputs(path):
    """Chapters are committed executed in the cpu profile (scripts/main.sh runs them so), without errors."""
    nb = json.loads(path.read_text())
    setup = nb["cells"][4]
    text = "".join("".join(o.get("text", "")) for o in setup.get("outputs", []))
    assert text.startswith("profile cpu "), f"{path.name}: commit it executed in the cpu profile (scripts/main.sh)"
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert path.stat().st_size < 5_000_000


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_executes_in_ci_profile(path, tmp_path):
    """papermill, ci profile: any error in any cell fails. The per-cell timeout only guards against hangs; wall
    time is a measurement, not a test (a busy machine is slower): it is printed in the run's summary."""
    times = chapters.run([path], "ci", tmp_path, inplace=False, timeout=1800)
    CHAPTER_SECONDS.update(times)
    out = json.loads((tmp_path / path.name).read_text())
    assert not [o for c in out["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("headless Chromium is needed for the rendered-book test: apt-get install chromium")


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    subprocess.run(["bash", str(ROOT / "scripts" / "vendor_js.sh")], check=True, cwd=ROOT)
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--path-output", str(out),
         "-W", "--keep-going"], capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out / "_build" / "html"


def _dom(chromium: str, page: Path, tmp: Path) -> str:
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         f"--user-data-dir={tmp}", "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_built_pages_work_offline(built_book, tmp_path):
    chromium = _chromium()
    html = built_book
    for page in html.rglob("*.html"):
        text = page.read_text(errors="replace")
        assert "cdn.jsdelivr" not in text and "cdnjs.cloudflare" not in text, f"{page.name} loads from a CDN"
        remote = re.findall(r'<img[^>]+src="(https?://[^"]+)"', text)
        assert not remote, f"{page.name} shows images from the network: {remote[:3]}"
    intro = _dom(chromium, html / "book" / "intro.html", tmp_path / "a")
    assert "mjx-container" in intro, "math was not typeset by the local MathJax"
    assert "\\[" not in re.sub(r"<script.*?</script>", "", intro, flags=re.S)
    chapter = _dom(chromium, html / "book" / "01_volumes_partitions.html", tmp_path / "b")
    assert chapter.count("<img") >= 3, "figures missing"
    widgets = re.findall(r'class="[^"]*widget-(?:slider|dropdown|select|checkbox|hbox|vbox)[^"]*"', chapter)
    assert widgets, "widget areas are empty: the local ipywidgets manager did not render them"


# The book speaks of methods, data and results, never of its own development (issues, tickets, tasks). A reference
# to a third party's issue tracker names whose it is ("issue #11 of the official repository").
DEVELOPMENT_TALK = [
    r"\btickets?\b", r"\b(?:this|the|an|our|that) issues?\b", r"\bissues? (?:list|tracker)\b",
    r"\bissue\s*#?\d+\b(?! of the official)", r"\bbacklog\b", r"\bTODO\b", r"\bFIXME\b", r"\bwork in progress\b",
    r"\b(?:was|were|is|are) asked for\b", r"\bwhile writing\b",
]


def _book_texts():
    for path in [ROOT / "book" / "intro.md", ROOT / "book" / "notation.md", *CHAPTERS]:
        if path.suffix == ".md":
            yield path.name, 0, path.read_text()
            continue
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            yield path.name, i, "".join(cell.get("source", ""))


def test_course_box_quotes_the_measured_times(tmp_path):
    """The opening's time line is written from results/chapter_times.csv (CPU time of one core), not typed."""
    times = tmp_path / "times.csv"
    chapters.record_time("07_x.ipynb", "ci", wall_s=50, cpu_s=40, path=times)
    chapters.record_time("07_x.ipynb", "cpu", wall_s=900, cpu_s=1200, path=times)
    chapters.record_time("07_x.ipynb", "cpu", wall_s=700, cpu_s=660, path=times)  # the newest row counts
    line = chapters.time_line(Path("07_x.ipynb"), 25, chapters.measured_times(times))
    assert line.startswith("**Time:** reading about 25 min; running `ci` about 1 min, `cpu` 11 min of one CPU core")
    assert "not measured" in chapters.time_line(Path("08_y.ipynb"), 25, chapters.measured_times(times))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_has_its_times_measured(path):
    times = chapters.measured_times()
    assert {(path.name, "ci"), (path.name, "cpu")} <= set(times), "run: scripts/chapters.py run --record"


def test_no_chapter_speaks_of_its_own_development():
    found = [f"{name} cell {i}: {m.group(0)!r} in ...{text[max(0, m.start() - 60):m.end() + 40]!r}..."
             for name, i, text in _book_texts() for pattern in DEVELOPMENT_TALK
             for m in re.finditer(pattern, text, flags=re.I)]
    assert not found, "\n".join(found)
    # the patterns catch what they are for
    assert re.search(DEVELOPMENT_TALK[1], "a third of the +0.05 the issue asked for", flags=re.I)
    assert not re.search(DEVELOPMENT_TALK[3], "in issue #11 of the official repository a user", flags=re.I)


def test_chapters_run_several_at_a_time(tmp_path):
    """``chapters.py run --jobs 2`` (scripts/main.sh): every chapter executed, each kernel with cores // jobs
    threads."""
    def notebook(value):
        code = lambda source, tags: {"cell_type": "code", "metadata": {"tags": tags}, "source": source,
                                     "outputs": [], "execution_count": None}
        return {"cells": [code("profile = None", ["parameters"]),
                          code(f"import os\nprint('threads', os.environ['OMP_NUM_THREADS'], profile, {value})", [])],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}

    paths = []
    for i in range(3):
        path = tmp_path / f"0{i}_x.ipynb"
        path.write_text(json.dumps(notebook(i)))
        paths.append(path)
    out = tmp_path / "out"
    times = chapters.run_parallel(paths, "ci", out, inplace=False, timeout=300, jobs=2)
    assert sorted(times) == [p.name for p in paths]
    threads = max(1, (os.cpu_count() or 1) // 2)
    for i, path in enumerate(paths):
        text = "".join("".join(o.get("text", "")) for c in json.loads((out / path.name).read_text())["cells"]
                       for o in c.get("outputs", []))
        assert f"threads {threads} ci {i}" in text, text
