"""Chapters of the book: create, normalise, check and execute them.

    python scripts/chapters.py new book/07_x.ipynb --title "Chapter 7: ..." --summary "One line."
    python scripts/chapters.py opening            # rewrite every chapter's standard opening from the template
    python scripts/chapters.py check              # structure checks (also run by the tests)
    python scripts/chapters.py run --profile cpu --inplace    # execute with papermill, outputs into the chapters
    python scripts/chapters.py run --profile cpu --inplace --jobs 2   # two chapters at a time (2 cores)
    python scripts/chapters.py run --profile ci --out DIR     # execute copies (the tests)
    python scripts/chapters.py run --profile cpu --out DIR --record   # ... and record the cost in
                                                  # results/chapter_times.csv (the openings quote it)

Every chapter opens the same way: (0) title, Colab badge, summary and a course box (learning objectives,
prerequisites, time); (1) a guarded install cell; (2) the chapter's imports; (3) the ``parameters`` cell; (4) the
set-up cell. Cells 0, 1, 3 and 4 are written from the template below (title, summary, objectives, prerequisites
and reading time live in the notebook's metadata under ``glcl``; running times come from the measured rows of
results/chapter_times.csv); cell 2 is the author's. Every chapter also closes its main text with a
``Takeaways`` box.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
TIMES = ROOT / "results" / "chapter_times.csv"
TIME_FIELDS = ["date", "chapter", "profile", "threads", "wall_s", "cpu_s", "machine"]
COURSE_KEYS = ("objectives", "prerequisites", "reading_minutes")
TAKEAWAYS = "```{admonition} Takeaways"
sys.path.insert(0, str(ROOT))

from glcl_core import REPOSITORY  # noqa: E402

OPENING = "opening"
INSTALL_SOURCE = ("# On Colab: a copy of the repository (the book's results and checkpoints), glcl_core installed "
                  "from it\n# (Colab's own CUDA torch is kept), and the chapter's folder as the working directory, "
                  f'''so that ../results\n# reads as in a clone. Elsewhere: nothing to do.
import sys
if "google.colab" in sys.modules:
    import os
    import subprocess
    if not os.path.isdir("/content/glcl-book"):
        subprocess.run(["git", "clone", "-q", "--depth", "1", "https://github.com/{REPOSITORY}",
                        "/content/glcl-book"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "/content/glcl-book[book]"], check=True)
    os.chdir("/content/glcl-book/book")''')
PARAMETERS_SOURCE = ('''profile = None  # "ci" (seconds), "cpu" (minutes), "gpu" (paper scale); None: $GLCL_PROFILE, '''
                     '''else cpu (also on a GPU)
seed = 0
data = None  # None: the chapter's embedded data; "standard", "varied", "multicontrast"; "Task05_Prostate" '''
                     '''(fetched); a folder''')
SETUP_SOURCE = '''from glcl_core.book import chapter_setup

run = chapter_setup(profile, seed, data)'''


def parameters_source(meta: dict) -> str:
    """The standard parameters cell, plus the chapter's own parameters (metadata ``glcl.parameters``, e.g.
    ``retrain = False  # ...``) after the two shared lines."""
    extra = meta.get("parameters", "").strip("\n")
    return PARAMETERS_SOURCE + (f"\n{extra}" if extra else "")


def chapters() -> list[Path]:
    return sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))


def _cell(kind: str, source: str, tags: list[str]) -> dict:
    cell = {"cell_type": kind, "metadata": {"tags": tags}, "source": source}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def measured_times(path: Path | None = None) -> dict[tuple[str, str], dict]:
    """``{(chapter file, profile): row}``: the newest measured row of results/chapter_times.csv per pair."""
    import csv

    if not (path or TIMES).exists():
        return {}
    with open(path or TIMES, newline="") as f:
        return {(row["chapter"], row["profile"]): row for row in csv.DictReader(f)}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else "about 1 min" if seconds >= 30 else "under 1 min"


def time_line(path: Path, reading_minutes: int, times: dict | None = None) -> str:
    """Reading time, and each profile's running time as measured (one CPU core: the kernel's CPU time with one
    thread, so that other jobs on the machine do not inflate it)."""
    times = measured_times() if times is None else times
    parts = []
    for profile in ("ci", "cpu"):
        row = times.get((path.name, profile))
        if row:
            parts.append(f"`{profile}` {_minutes(float(row['cpu_s']))}")
    running = ", ".join(parts) + " of one CPU core (measured)" if parts else "not measured yet"
    counted = "section 2 counts the work" if path.name.startswith("07_") else "Chapter 7 counts the work"
    return f"**Time:** reading about {reading_minutes} min; running {running}; `gpu` depends on the card ({counted})."


def course_box(path: Path, meta: dict, times: dict | None = None) -> str:
    if not all(meta.get(k) for k in COURSE_KEYS):
        return ""
    objectives = "\n".join(f"* {o}" for o in meta["objectives"])
    return ("\n\n```{admonition} In this chapter\n:class: tip\n"
            f"**You will be able to:**\n\n{objectives}\n\n"
            f"**Prerequisites:** {meta['prerequisites']}\n\n"
            f"{time_line(path, meta['reading_minutes'], times)}\n```")


def _title_source(path: Path, title: str, summary: str, meta: dict | None = None) -> str:
    link = f"https://colab.research.google.com/github/{REPOSITORY}/blob/main/book/{path.name}"
    # the badge image ships with the book (book/images), so the offline book shows it too
    badge = f"[![Open In Colab](images/colab-badge.svg)]({link})"
    return f"# {title}\n\n{badge}\n\n{summary}" + course_box(path, meta or {})


def opening_cells(path: Path, title: str, summary: str, imports: dict | None = None,
                  parameters: str = PARAMETERS_SOURCE, meta: dict | None = None) -> list[dict]:
    return [
        _cell("markdown", _title_source(path, title, summary, meta), [OPENING]),
        _cell("code", INSTALL_SOURCE, [OPENING, "install", "hide-input"]),
        imports or _cell("code", "import matplotlib.pyplot as plt\n", []),
        _cell("code", parameters, [OPENING, "parameters"]),
        _cell("code", SETUP_SOURCE, [OPENING, "setup"]),
    ]


def new(path: Path, title: str, summary: str) -> None:
    if path.exists():
        raise SystemExit(f"{path} exists; use 'opening' to refresh its opening")
    nb = {
        "cells": opening_cells(path, title, summary),
        "metadata": {
            "glcl": {"title": title, "summary": summary},
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    _write(path, nb)


def refresh_opening(path: Path) -> None:
    nb = json.loads(path.read_text())
    meta = nb["metadata"].get("glcl")
    if not meta:
        raise SystemExit(f"{path}: metadata has no 'glcl' title/summary")
    cells = nb["cells"]
    # the author's imports cell: the first code cell that is not part of the opening
    body_start = 0
    imports = None
    for i, c in enumerate(cells[:6]):
        tags = c.get("metadata", {}).get("tags", [])
        if OPENING in tags:
            body_start = i + 1
        elif imports is None and c["cell_type"] == "code":
            imports, body_start = c, i + 1
    new_cells = opening_cells(path, meta["title"], meta["summary"], imports, parameters_source(meta), meta)
    for old, fresh in zip([c for c in cells[:body_start] if OPENING in c.get("metadata", {}).get("tags", [])],
                          [c for c in new_cells if OPENING in c["metadata"].get("tags", [])]):
        if fresh["cell_type"] == "code" and "".join(old.get("source", "")) == fresh["source"]:
            fresh["outputs"] = old.get("outputs", [])  # unchanged cell: keep its committed output
            fresh["execution_count"] = old.get("execution_count")
    nb["cells"] = new_cells + cells[body_start:]
    _write(path, nb)


def _write(path: Path, nb: dict) -> None:
    import hashlib

    seen = set()
    for c in nb["cells"]:  # the list-of-lines form papermill and Jupyter write: no diff noise between the two
        if isinstance(c.get("source"), str):
            c["source"] = c["source"].splitlines(keepends=True)
    for i, c in enumerate(nb["cells"]):
        if not c.get("id") or c["id"] in seen:  # stable ids: no diff noise between runs
            c["id"] = hashlib.sha1(f"{path.name}:{i}:{''.join(c.get('source', ''))}".encode()).hexdigest()[:8]
        seen.add(c["id"])
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def check(path: Path) -> list[str]:
    """Problems with a chapter's structure (empty list: fine)."""
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    problems = []
    meta = nb.get("metadata", {}).get("glcl")
    if not meta:
        return [f"{path.name}: no glcl title/summary in metadata"]
    src = ["".join(c.get("source", "")) for c in cells]
    if len(cells) < 6:
        return [f"{path.name}: fewer than 6 cells"]
    missing = [k for k in COURSE_KEYS if not meta.get(k)]
    if missing:
        problems.append(f"{path.name}: metadata glcl lacks {', '.join(missing)} (the opening's course box)")
    if src[0] != _title_source(path, meta["title"], meta["summary"], meta):
        problems.append(f"{path.name}: cell 0 is not the standard title + Colab badge + course box (run 'opening')")
    if src[1] != INSTALL_SOURCE:
        problems.append(f"{path.name}: cell 1 is not the standard install cell")
    if cells[2]["cell_type"] != "code" or not all(
        line.startswith(("import ", "from ", "#")) or not line.strip() for line in src[2].splitlines()
    ):
        problems.append(f"{path.name}: cell 2 must hold only the chapter's imports")
    if "parameters" not in cells[3].get("metadata", {}).get("tags", []) or src[3] != parameters_source(meta):
        problems.append(f"{path.name}: cell 3 is not the standard parameters cell (plus metadata glcl.parameters)")
    if src[4] != SETUP_SOURCE:
        problems.append(f"{path.name}: cell 4 is not the standard set-up cell")
    for i, s in enumerate(src):
        if (cells[i]["cell_type"] == "code" and ("def " in s or "class " in s)
                and not re.search(r"^# (solution|exercise)", s.lower(), re.M)):
            problems.append(f"{path.name}: cell {i} defines a function or class; library code belongs in glcl_core")
    if not any("exercise" in s.lower() for s in src):
        problems.append(f"{path.name}: no exercise")
    if not any(c["cell_type"] == "markdown" and TAKEAWAYS in s for c, s in zip(cells, src)):
        problems.append(f"{path.name}: no '{TAKEAWAYS}' box closing the main text")
    for i, s in enumerate(src):
        if cells[i]["cell_type"] == "markdown" and re.search(r"\bPLACEHOLDER\b|\bTODO\b|\bFIXME\b|\bTBD\b", s):
            problems.append(f"{path.name}: cell {i} holds unfinished text ({s.strip()[:40]!r})")
    return problems


def record_time(chapter: str, profile: str, wall_s: float, cpu_s: float, path: Path | None = None) -> None:
    """Append one measured row to results/chapter_times.csv."""
    import csv
    import datetime
    import platform

    path = path or TIMES
    new_file = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TIME_FIELDS)
        if new_file:
            writer.writeheader()
        writer.writerow({"date": datetime.date.today().isoformat(), "chapter": chapter, "profile": profile,
                         "threads": os.environ.get("OMP_NUM_THREADS", ""), "wall_s": f"{wall_s:.0f}",
                         "cpu_s": f"{cpu_s:.0f}", "machine": f"{platform.machine()} {os.cpu_count()} cores"})


def _children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the kernel, once papermill has shut it down
    return usage.ru_utime + usage.ru_stime


def run(paths: list[Path], profile: str, out: Path | None, inplace: bool, timeout: int,
        record: bool = False) -> dict[str, float]:
    """Execute chapters with papermill; returns seconds per chapter. Raises on the first failing chapter.
    ``record``: append each chapter's wall and CPU time to results/chapter_times.csv (only meaningful with
    ``OMP_NUM_THREADS=1``, which the command sets when it records, so the CPU time is one core's time)."""
    import papermill as pm

    os.environ.setdefault("GLCL_PROGRESS", "0")  # no tqdm widgets in saved chapters (their state is not saved)
    times = {}
    for path in paths:
        target = path if inplace else (out / path.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        t0, cpu0 = time.perf_counter(), _children_cpu_seconds()
        pm.execute_notebook(str(path), str(target), parameters={"profile": profile}, cwd=str(path.parent),
                            kernel_name="python3", progress_bar=False, execution_timeout=timeout,
                            request_save_on_cell_execute=False)
        times[path.name] = time.perf_counter() - t0
        cpu = _children_cpu_seconds() - cpu0
        print(f"[chapters] {path.name}: {times[path.name]:.1f} s wall, {cpu:.1f} s CPU ({profile})", flush=True)
        if record:
            record_time(path.name, profile, times[path.name], cpu)
        if inplace:
            _strip_papermill_metadata(target)
    return times


def _measured_cpu_seconds(profile: str) -> dict[str, float]:
    """The latest measured CPU seconds per chapter in results/chapter_times.csv for ``profile`` (empty if none)."""
    import csv

    if not TIMES.exists():
        return {}
    with open(TIMES, newline="") as f:
        return {row["chapter"]: float(row["cpu_s"]) for row in csv.DictReader(f) if row["profile"] == profile}


def _run_one(args: tuple) -> tuple[str, float]:
    path, profile, out, inplace, timeout, record, threads = args
    os.environ["OMP_NUM_THREADS"] = str(threads)  # inherited by this worker's kernel
    return path.name, run([path], profile, out, inplace, timeout, record)[path.name]


def run_parallel(paths: list[Path], profile: str, out: Path | None, inplace: bool, timeout: int, jobs: int,
                 record: bool = False) -> dict[str, float]:
    """Execute chapters ``jobs`` at a time, each kernel with ``cores // jobs`` threads, the longest first (by the
    CPU seconds measured in results/chapter_times.csv) so that no long chapter starts last. Chapters are
    independent: each reads the shipped checkpoints and writes its own run folders."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = 1 if record else max(1, (os.cpu_count() or 1) // jobs)
    cost = _measured_cpu_seconds(profile)
    order = sorted(paths, key=lambda p: -cost.get(p.name, 0.0))
    times = {}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_run_one, (p, profile, out, inplace, timeout, record, threads)) for p in order]
        for future in as_completed(futures):
            name, seconds = future.result()  # re-raises a failing chapter's error
            times[name] = seconds
    return times


def _strip_papermill_metadata(path: Path) -> None:
    """Keep committed chapters free of per-run noise (timestamps, durations) so diffs show content only."""
    nb = json.loads(path.read_text())
    nb["metadata"].pop("papermill", None)
    for c in nb["cells"]:
        c.get("metadata", {}).pop("papermill", None)
        c.get("metadata", {}).pop("execution", None)
        if c.get("metadata", {}).get("tags") == []:
            c["metadata"].pop("tags")
    # papermill injects a cell after 'parameters' with the values used; the set-up cell already prints them
    nb["cells"] = [c for c in nb["cells"] if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("new")
    p.add_argument("path", type=Path)
    p.add_argument("--title", required=True)
    p.add_argument("--summary", required=True)
    p = sub.add_parser("opening")
    p.add_argument("paths", nargs="*", type=Path)
    p = sub.add_parser("check")
    p.add_argument("paths", nargs="*", type=Path)
    p = sub.add_parser("run")
    p.add_argument("paths", nargs="*", type=Path)
    p.add_argument("--profile", required=True, choices=["ci", "cpu", "gpu"])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--inplace", action="store_true")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    p.add_argument("--jobs", type=int, default=1,
                   help="chapters executed at once (each kernel gets cores // jobs threads), longest first")
    p.add_argument("--record", action="store_true",
                   help="append wall and CPU time per chapter to results/chapter_times.csv (one thread)")
    args = parser.parse_args()
    if getattr(args, "record", False):
        os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the kernels: CPU time = one core's time
    if args.cmd == "new":
        new(args.path, args.title, args.summary)
    elif args.cmd == "opening":
        for path in args.paths or chapters():
            refresh_opening(path)
    elif args.cmd == "check":
        problems = [p for path in (args.paths or chapters()) for p in check(path)]
        print("\n".join(problems) or "all chapters fine")
        sys.exit(1 if problems else 0)
    else:
        if not args.inplace and args.out is None:
            parser.error("run needs --inplace or --out DIR")
        t0 = time.perf_counter()
        paths = args.paths or chapters()
        if args.jobs > 1:
            times = run_parallel(paths, args.profile, args.out, args.inplace, args.timeout, args.jobs, args.record)
        else:
            times = run(paths, args.profile, args.out, args.inplace, args.timeout, args.record)
        print(f"[chapters] {len(times)} chapters ({args.profile}): {sum(times.values()):.1f} s of chapter time, "
              f"{time.perf_counter() - t0:.1f} s wall with {args.jobs} at a time")


if __name__ == "__main__":
    main()
