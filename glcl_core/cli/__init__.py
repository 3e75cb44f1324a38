"""Command line: ``python -m glcl_core <command>``: the parser, the checks of paths and options, the subcommands and the
entry point with its exit codes.

Errors from bad arguments or paths (and files given as checkpoints that are not ones) print one line and exit with
code 2 (no traceback); a full disk prints one line naming the file and exits with code 1.

Several GPUs or machines: launch the same command with ``torchrun``, e.g.
``torchrun --nproc-per-node 4 -m glcl_core pretrain --profile gpu --data PATH --out runs/pre``; rank 0 prints and
writes the run folder (see :mod:`glcl_core.distributed`).

Modules: ``parser`` (:func:`build_parser`, the choices kept free of torch so ``--help`` stays fast), ``checks``
(paths, options, :class:`CLIError`, the run configuration), ``commands`` (one function per subcommand), ``entry``
(:func:`main`).
"""
from glcl_core.cli.checks import CLIError
from glcl_core.cli.entry import main
from glcl_core.cli.parser import build_parser

__all__ = ["CLIError", "build_parser", "main"]
