"""Command line: ``python -m glcl_core <command>``.

Errors from bad arguments or paths print one line and exit with code 2 (no traceback).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _cmd_data(args: argparse.Namespace) -> None:
    from glcl_core.data import embedded_dataset, load_volumes, summarize

    t0 = time.perf_counter()
    path = Path(args.data) if args.data else embedded_dataset()
    volumes = load_volumes(path)
    print(f"data: {path}  ({time.perf_counter() - t0:.1f} s)")
    print(summarize(volumes))


def _cmd_main(args: argparse.Namespace) -> None:
    """The README's main job: materialise the embedded data set and summarise it."""
    _cmd_data(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m glcl_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="load a data folder (default: the embedded set) and print its summary")
    p.add_argument("--data", default=None, help="folder (Decathlon, ACDC or image/label pairs); default embedded")
    p.set_defaults(func=_cmd_data)
    p = sub.add_parser("main", help="the README's main job")
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from glcl_core.data import DataError

    try:
        args.func(args)
    except (CLIError, DataError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
