"""The entry point ``main(argv)`` of ``python -m glcl_core``: parse, run the subcommand, and turn user errors into
one line on stderr and an exit code (2 bad input, 1 full disk, 130 Ctrl-C with how to resume).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys

from glcl_core.cli.checks import CLIError
from glcl_core.cli.parser import build_parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # argparse itself exits with code 2 on bad arguments
    from glcl_core import distributed
    from glcl_core.data import DataError
    from glcl_core.train.run_folder import RunExistsError
    from glcl_core.train.lock import RunLockedError

    # joins torchrun's process group (a no-op unless launched by torchrun with several processes)
    joined = not distributed.is_distributed() and distributed.init_distributed()
    # under torchrun only rank 0 prints (errors still reach stderr from every rank)
    quiet = open(os.devnull, "w") if not distributed.is_main() else None
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            args.func(args)
    except (CLIError, DataError, RunExistsError, RunLockedError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C: one line, how to continue, exit code 130 (128 + SIGINT)
        if distributed.is_main():
            print(_interrupted_message(err, args, argv), file=sys.stderr, flush=True)
        return 130
    except ValueError as err:  # configuration problems (too few volumes, unknown fields, ...), not a checkpoint
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk: one line naming the file (atomic writes leave the old file as it was)
        if err.errno != errno.ENOSPC:
            raise
        from glcl_core.train.checkpoint import DiskFullError

        text = str(err) if isinstance(err, DiskFullError) else \
            f"{err.filename or 'a file'}: could not write it, no space left on device (ENOSPC)"
        print(f"error: {text}", file=sys.stderr)
        return 1
    finally:
        if quiet is not None:
            quiet.close()
        if joined:
            distributed.cleanup()
    return 0


def _interrupted_message(err: KeyboardInterrupt, args: argparse.Namespace, argv: list[str]) -> str:
    """The line printed after Ctrl-C: where training stopped and the command that continues it."""
    import shlex

    from glcl_core.train.engine import TrainingInterrupted

    kept = [a for a in argv if a not in ("--overwrite", "--resume")]
    again = shlex.join(["python", "-m", "glcl_core", *kept])
    if args.command in ("pretrain", "finetune"):
        how = f"resume with: {again} --resume"
    elif args.command == "experiment":
        how = f"resume with the same command (finished cells are kept, unfinished runs resume): {again}"
    else:
        return "interrupted"
    if not isinstance(err, TrainingInterrupted):
        return f"interrupted; {how}"
    stage = f" ({err.desc})" if err.desc else ""
    if err.out is None or err.checkpoint_step == 0:
        return f"interrupted at step {err.step}{stage} before its first checkpoint; {how}"
    return (f"interrupted at step {err.step}{stage}; last checkpoint at step {err.checkpoint_step} "
            f"({err.out / 'last.pt'}); {how}")
