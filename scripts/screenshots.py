"""Screenshots of the rendered book's key figures, as a reader sees them at a given page width.

    python scripts/screenshots.py                      # build the book (no execution) and shoot every figure
    python scripts/screenshots.py --html _build/html   # use an existing build

Each shot opens a copy of the chapter's page in headless Chromium at ``--width`` pixels, with everything in the
article before the code cell holding ``marker`` hidden (so that cell and its figure are at the top), and saves
``results/screenshots/<name>.png``. The copy lives next to the page (so the book's CSS and images load) and is
removed afterwards.
"""
from __future__ import annotations

import argparse
import html as html_module
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "screenshots"

# name -> (page, text of the code cell whose output is shot, window height in pixels)
SHOTS = {
    "ch2_umap": ("book/02_global_strategies.html", "viz.plot_umap(", 1300),
    "ch2_similarity": ("book/02_global_strategies.html", "viz.plot_position_similarity(", 900),
    "ch4_ablation": ("book/04_local_loss.html", "viz.plot_ablation(", 1300),
    "ch6_study": ("book/06_results.html", "plot_study(study_tables", 1300),
    "ch6_headline": ("book/06_results.html", "seg.plot_label_efficiency(efficiency", 900),
    "ch6_budget": ("book/06_results.html", "budget = study.budget_table(", 1100),
}

SCROLL = """<script>
// Keep the page's layout (sidebars, column width) but hide everything in the article before the target cell, so
// that the cell (code and figure) sits at the top of the window.
document.addEventListener("DOMContentLoaded", () => {
  const cells = Array.from(document.querySelectorAll("div.cell"));
  const cell = cells.find(c => c.textContent.includes(%r));
  if (!cell) { document.body.innerHTML = "<h1>marker not found</h1>"; return; }
  let node = cell;
  while (node && node.tagName !== "ARTICLE") {
    let sibling = node.previousElementSibling;
    while (sibling) { sibling.style.display = "none"; sibling = sibling.previousElementSibling; }
    node = node.parentElement;
  }
});
</script>
"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("headless Chromium is needed: apt-get install chromium")


def build(out: Path) -> Path:
    subprocess.run(["bash", str(ROOT / "scripts" / "vendor_js.sh")], check=True, cwd=ROOT)
    subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--path-output", str(out)],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out / "_build" / "html"


def shoot(html: Path, name: str, page: str, marker: str, height: int, width: int) -> Path:
    source = html / page
    if not source.is_file():
        raise SystemExit(f"{source}: no such page in the build")
    text = source.read_text(errors="replace")
    if marker not in html_module.unescape(re.sub(r"<[^>]+>", "", text)):  # code is split into highlighted spans
        raise SystemExit(f"{source}: marker {marker!r} not found")
    copy = source.with_name(f".shot-{name}.html")
    copy.write_text(text.replace("</body>", SCROLL % marker + "</body>"))
    target = OUT / f"{name}.png"
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}",
                            f"--window-size={width},{height}", "--virtual-time-budget=15000",
                            f"--screenshot={target}", copy.as_uri()],
                           check=True, capture_output=True, timeout=180)
    finally:
        copy.unlink(missing_ok=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=None, help="a built book's html folder (default: build one)")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("names", nargs="*", default=list(SHOTS))
    args = parser.parse_args()
    html = args.html or build(Path(tempfile.mkdtemp(prefix="glcl-book-")))
    for name in args.names:
        page, marker, height = SHOTS[name]
        print(shoot(html, name, page, marker, height, args.width))


if __name__ == "__main__":
    main()
