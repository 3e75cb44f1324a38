"""Summarise a low-label grid's CSV: tables (markdown and CSV) and figures.

    python scripts/summarize_results.py runs/experiment-cpu/results.csv --out results/summary-cpu

Writes into --out: summary.md / summary.csv (mean ± sd of the per-seed mean foreground Dice, per initialisation and
number of labelled volumes), paired.md / paired.csv (mean paired difference to --baseline with a 95% t-interval over
matched seeds), per_class.md, dice.png and paired.png; with --grid RUN_FOLDER also validation_curves.csv/.png
(validation Dice per fine-tuning step, mean over seeds). Prints the summary table. Exit code 2 on a bad input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, help="results.csv written by run_experiment / python -m glcl_core experiment")
    parser.add_argument("--out", type=Path, required=True, help="folder for the tables and figures")
    parser.add_argument("--baseline", default="random", help="initialisation the others are compared with")
    parser.add_argument("--title", default=None, help="figure title (default: the CSV's path)")
    parser.add_argument("--grid", type=Path, default=None,
                        help="the grid's run folder (e.g. runs/grid-cpu): also plot validation Dice per "
                             "fine-tuning step")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    from glcl_core.analysis import results
    from glcl_core.viz.segmentation import plot_dice, plot_paired

    try:
        df = results.load_results(args.csv)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    summary = results.summary_table(df)
    summary.to_csv(args.out / "summary.csv", index=False)
    table = results.to_markdown(results.format_summary(summary))
    header = (f"Mean ± sd over seeds of the mean foreground test Dice (seeds in brackets); source: {args.csv}\n\n")
    (args.out / "summary.md").write_text(header + table)
    per_class = results.to_markdown(results.format_summary(results.per_class_table(df)))
    (args.out / "per_class.md").write_text("Per class: " + header + per_class)
    plot_dice(summary, title=args.title or f"Test Dice: {args.csv}").savefig(args.out / "dice.png", dpi=100)

    print(header + table)
    strategies = set(summary["strategy"])
    if args.baseline in strategies and len(strategies) > 1:
        paired = results.paired_comparison(df, baseline=args.baseline)
        paired.to_csv(args.out / "paired.csv", index=False)
        text = (f"Paired difference to {args.baseline} over matched seeds (same labelled volumes), 95% t-interval\n\n"
                + results.to_markdown(results.format_paired(paired)))
        (args.out / "paired.md").write_text(text)
        if len(paired):
            plot_paired(paired, results.paired_differences(df, args.baseline), baseline=args.baseline).savefig(
                args.out / "paired.png", dpi=100)
        print(text)
    else:
        print(f"(no paired comparison: baseline {args.baseline!r} missing or alone in the results)")
    if args.grid is not None:
        from glcl_core.viz.segmentation import plot_validation_curves

        try:
            curves = results.validation_curves(args.grid)
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        summary_curves = results.curve_summary(curves)
        summary_curves.to_csv(args.out / "validation_curves.csv", index=False)
        plot_validation_curves(summary_curves).savefig(args.out / "validation_curves.png", dpi=100)
    print(f"written: {', '.join(sorted(p.name for p in args.out.iterdir()))} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
