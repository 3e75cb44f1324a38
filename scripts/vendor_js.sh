#!/usr/bin/env bash
# Fetch (from the npm registry, once) and stage the JavaScript the rendered book needs offline:
# MathJax 3 and the ipywidgets HTML manager with require.js. Staged into _vendor/, which the book build copies
# to the HTML root (html_extra_path), outside _static/ so Jupyter Book does not inject it into every page twice.
set -euo pipefail
cd "$(dirname "$0")/.."
src=book/vendor
if [ ! -d "$src/node_modules/mathjax" ] || [ "$src/package-lock.json" -nt "$src/node_modules/.stamp" ]; then
  (cd "$src" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
  touch "$src/node_modules/.stamp"
fi
rm -rf _vendor && mkdir -p _vendor/mathjax _vendor/widgets
mj="$src/node_modules/mathjax/es5"
cp "$mj/tex-svg.js" _vendor/mathjax/
cp -r "$mj/input" "$mj/ui" "$mj/a11y" _vendor/mathjax/ 2>/dev/null || true  # parts MathJax loads on demand
cp "$src/node_modules/requirejs/require.js" _vendor/widgets/
cp "$src/node_modules/@jupyter-widgets/html-manager/dist/embed-amd.js" _vendor/widgets/
cp "$src/node_modules/@jupyter-widgets/html-manager/dist/"*.{woff,woff2,ttf,eot,svg} _vendor/widgets/ 2>/dev/null || true
echo "[vendor] staged $(du -sh _vendor | cut -f1) of offline JavaScript in _vendor/"
