"""Checks of the command line's paths and options, made before any data is read or anything is written, and the
run configuration (``make_config``) the parsed options give; :class:`CLIError` is the one-line user error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


PRETRAINING_STAGES = ("global", "local")


def _checked_checkpoint(path: Path, purpose: str) -> dict:
    """Read ``path`` (``load_checkpoint``: a one-line CheckpointFormatError when it is not a checkpoint) before any
    data is read or anything is written; for ``evaluate``, refuse a pre-training checkpoint."""
    from glcl_core.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    if purpose == "evaluate":
        stage = ckpt.get("stage")
        if stage in PRETRAINING_STAGES:
            raise CLIError(f"--checkpoint {path}: is a pre-training checkpoint ({stage} stage), it has no fine-tuned "
                           f"segmentation head to evaluate; fine-tune it first: python -m glcl_core finetune --init "
                           f"{path} ... then evaluate that run's final.pt")
    if "model" not in ckpt:
        flag = "--checkpoint" if purpose == "evaluate" else "--init"
        raise CLIError(f"{flag} {path}: holds no 'model' weights (a run's last.pt? give its final.pt)")
    return ckpt


def _existing(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CLIError(f"{p}: no such file or folder")
    return p


def _data_folder(path: str) -> Path:
    """``--data``: an existing folder (not a file, ``/dev/null`` or another device), or the name of a public data
    set (``fetch --list``), downloaded once into the data cache and verified."""
    from glcl_core.data.datasets import is_known
    from glcl_core.data.fetching import fetch

    if not Path(path).expanduser().exists() and is_known(path):
        return fetch(path)
    p = _existing(path)
    if not p.is_dir():
        kind = "a file" if p.is_file() else "a device or other special file"
        raise CLIError(f"--data {p}: is {kind}; give the data folder (Decathlon / nnU-Net task folder, ACDC folder "
                       f"or a folder of NIfTI images)")
    return p


def _check_out(args: argparse.Namespace, out: Path, folder_out: bool = True) -> None:
    """Refuse an output path inside, equal to or above the data (``--data``, and the data cache: GLCL_DATA_DIR or
    the embedded data set's folder), before anything is written."""
    from glcl_core.data.embedded import default_root

    folders = [Path(args.data).expanduser()] if getattr(args, "data", None) else []
    folders.append(default_root())
    target = out.expanduser().resolve()
    if folder_out and target.exists() and not target.is_dir():
        raise CLIError(f"--out {out} is a file; give a folder for the run")
    for folder in folders:
        data = folder.expanduser().resolve()
        if target == data or data in target.parents:
            raise CLIError(f"--out {out} is inside the data folder {folder}; write runs elsewhere (e.g. under runs/)")
        if target in data.parents:
            raise CLIError(f"--out {out} contains the data folder {folder}; choose a folder beside the data, not "
                           "above it")


def _say_if_fresh(args: argparse.Namespace, folder: Path) -> None:
    """``--resume`` without an earlier run in ``folder``: say (one line on stderr) that the run starts fresh."""
    from glcl_core.distributed import is_main
    from glcl_core.train.run_folder import has_run

    if args.resume and is_main() and not has_run(folder):
        print(f"--resume: no earlier run in {folder}; starting a fresh run", file=sys.stderr, flush=True)


# first lines of the CSV files `evaluate --out` writes (older versions had no resolution column)
EVALUATE_HEADERS = ("volume,class,dice,resolution", "volume,class,dice")


def _check_scores_file(out: Path) -> None:
    """``evaluate --out``: refuse a folder, or an existing file that is not a score table written by evaluate."""
    if out.is_dir():
        raise CLIError(f"--out {out} is a folder; give a CSV file name (e.g. {out / 'scores.csv'})")
    if out.exists() and out.stat().st_size > 0:  # an empty file holds nothing to lose
        try:
            with open(out, newline="") as fh:
                first = fh.readline().strip()
        except (OSError, UnicodeDecodeError):
            first = None
        if first not in EVALUATE_HEADERS:
            raise CLIError(f"--out {out} exists and is not a score table written by evaluate (its first line is not "
                           f"{EVALUATE_HEADERS[0]!r}); it was left as it was: choose another file name")


def _config(args: argparse.Namespace, **overrides):
    from glcl_core.train.config import make_config

    data = {"path": str(_data_folder(args.data)) if args.data else None}
    for key in ("embedded", "channel", "n_test", "n_val", "spacing"):
        if getattr(args, key, None) is not None:
            data[key] = getattr(args, key)
    if getattr(args, "frames", None):
        data["frames"] = ",".join(args.frames)
    # classes: --n-classes, else from the data (make_config: dataset.json labels, else the largest label + 1)
    n_classes = getattr(args, "n_classes", None)
    if n_classes is not None:
        overrides["model"] = {**overrides.get("model", {}), "n_classes": n_classes}
    loss = getattr(args, "finetune_loss", None) or getattr(args, "loss", None)  # experiment / finetune
    if loss:
        overrides["finetune"] = {**overrides.get("finetune", {}), "loss": loss}
    if hasattr(args, "compile"):
        overrides["speed"] = {"compile": args.compile, "channels_last": args.channels_last}
    return make_config(args.profile, seed=args.seed, preset=getattr(args, "preset", None),
                       budget=getattr(args, "budget", None) or "profile", data=data, **overrides)


def _split(cfg):
    """The data split; under torchrun rank 0 builds any data cache before the other ranks read it."""
    from glcl_core.distributed import main_first
    from glcl_core.experiment import prepare_split

    with main_first():
        return prepare_split(cfg)
