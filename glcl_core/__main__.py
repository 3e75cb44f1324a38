"""``python -m glcl_core <command>``: starts the command line, :func:`glcl_core.cli.main`.

The parser, the checks and the subcommands live in :mod:`glcl_core.cli`.
"""
import sys

from glcl_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
