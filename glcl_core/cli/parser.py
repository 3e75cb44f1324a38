"""The argument parser of ``python -m glcl_core``: the subcommands, their options and help texts, and the
checks of numeric options (argparse's own errors exit with code 2).
"""
from __future__ import annotations

import argparse

from glcl_core.cli.commands import (
    _cmd_data,
    _cmd_evaluate,
    _cmd_experiment,
    _cmd_fetch,
    _cmd_finetune,
    _cmd_main,
    _cmd_pretrain,
)
from glcl_core.profiles import PROFILES

# the first line of the command line's docstring, shown by --help
DESCRIPTION = "Command line: ``python -m glcl_core <command>``."

# Kept here, not imported from experiment/train, so `--help` and argument errors stay fast (no torch import).
GLOBAL_CHOICES = ("GR", "GD-", "GD", "PCL")
LOCAL_CHOICES = ("LR", "LD")
INIT_CHOICES = ("random", "GR", "GD-", "GD", "PCL", "GD+LR", "GD+LD", "PCL+LR")
EMBEDDED_PRESETS = ("standard", "varied", "multicontrast")  # glcl_core.data.presets.PRESETS
PRESET_CHOICES = ("pcl",)  # glcl_core.train.config.PRESETS
BUDGET_CHOICES = ("profile", "long")  # glcl_core.train.config.BUDGETS
FINETUNE_LOSSES = ("dice+ce", "dice", "glcl")  # glcl_core.train.finetuning.SEGMENTATION_LOSSES


def _speed_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channels-last", action="store_true", help="NHWC memory layout (faster convolutions on GPUs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the trained modules (slow first steps)")


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _embedded_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedded", choices=EMBEDDED_PRESETS, default=None,
                   help="preset of the embedded data set when --data is not given (default standard; "
                        "varied: more anatomical and contrast variation between subjects; "
                        "multicontrast: varied shapes, T1-, T2- or PD-like tissue contrast per subject)")


def _preset_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--preset", choices=PRESET_CHOICES, default=None,
                   help=f"another method's pipeline for {what}: pcl = PCL's (SGD 0.1 + cosine, pooled head to "
                        "512, PCL's augmentation, batch 32; the ci profile keeps its batch size)")


def _budget_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", choices=BUDGET_CHOICES, default="profile",
                   help="pre-training length: profile = the profile's (cpu: 300 global / 200 local steps); long = "
                        "the shipped checkpoints' (cpu: 3000 / 2000, chosen on validation volumes)")


def _common(p: argparse.ArgumentParser, out_help: str) -> None:
    p.add_argument("--data", default=None, metavar="PATH",
                   help="Decathlon, ACDC or image/label folder, or a data set to fetch (e.g. Task05_Prostate; see "
                        "`fetch --list`) (default: the embedded data set)")
    _embedded_flag(p)
    p.add_argument("--spacing", type=_positive_float, default=None, metavar="MM",
                   help="in-plane spacing the slices are resampled to (default: the profile's; GLCL: 1.367 for "
                        "ACDC, 0.625 for the prostate)")
    p.add_argument("--frames", nargs="+", choices=("ED", "ES"), default=None,
                   help="ACDC frames to load (default: ED ES; GLCL used ED)")
    p.add_argument("--channel", type=_non_negative_int, default=None, metavar="K",
                   help="image channel of multi-channel data (default 0)")
    p.add_argument("--n-classes", type=_positive_int, default=None, metavar="N",
                   help="segmentation classes with background (default: from the data: dataset.json labels, else "
                        "the largest label value + 1; the embedded set has 4)")
    p.add_argument("--n-test", type=_non_negative_int, default=None, metavar="N",
                   help="subjects held out for testing (default 6; a subject's volumes, e.g. ACDC ED and ES, "
                        "stay together)")
    p.add_argument("--n-val", type=_non_negative_int, default=None, metavar="N",
                   help="subjects for model selection (default 2)")
    p.add_argument("--profile", choices=PROFILES, default=None,
                   help="ci (seconds), cpu (minutes), gpu (paper scale); default from GLCL_PROFILE, else cpu")
    p.add_argument("--out", default=None, metavar="PATH", help=out_help)
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m glcl_core", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("main", help="the README's main job")
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--embedded", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_main)

    p = sub.add_parser("data", help="load a data folder (default: the embedded set) and print its summary")
    p.add_argument("--data", default=None, metavar="PATH", help="Decathlon, ACDC or image/label folder")
    _embedded_flag(p)
    p.add_argument("--channel", type=_non_negative_int, default=None, metavar="K",
                   help="image channel of multi-channel data (default: 0 for Decathlon / nnU-Net data; other "
                        "multi-channel images need a choice)")
    p.set_defaults(func=_cmd_data)

    p = sub.add_parser("fetch", help="download, verify and unpack a public data set (e.g. Task05_Prostate) into the "
                                     "data cache and print its folder")
    p.add_argument("name", nargs="?", default=None, help="data set name (case-insensitive; see --list)")
    p.add_argument("--list", action="store_true", help="list the known data sets and exit")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="cache folder (default: GLCL_DATA_DIR, else the embedded data set's cache folder)")
    p.add_argument("--url", default=None, metavar="URL",
                   help="download from this address instead (a mirror); the published MD5 is still checked")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("pretrain", help="global pre-training (encoder + g1), optionally then local (decoder + g2)")
    _common(p, "run folder (default runs/pretrain-STRATEGY)")
    p.add_argument("--strategy", choices=GLOBAL_CHOICES, default=None,
                   help="global strategy (default GD, or the preset's: PCL for --preset pcl)")
    _preset_flag(p, "the global stage")
    _budget_flag(p)
    # --local-strategy: the same under torchrun, whose own parser takes --local for an abbreviation of its options
    p.add_argument("--local", "--local-strategy", dest="local", choices=LOCAL_CHOICES, default=None,
                   help="also run the local stage")
    p.add_argument("--iterations", type=_positive_int, default=None, help="override the profile's iterations")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    _speed_flags(p)
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune with n labelled volumes, select on validation, test")
    _common(p, "run folder (default runs/finetune-nN-sSEED)")
    p.add_argument("--init", default=None, metavar="CKPT", help="pre-trained final.pt (default: random init)")
    p.add_argument("--n-labelled", type=_positive_int, default=2)
    p.add_argument("--iterations", type=_positive_int, default=None)
    p.add_argument("--loss", choices=FINETUNE_LOSSES, default=None,
                   help="fine-tuning loss (default dice+ce; glcl: GLCL's 1 - Dice per image and class)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    _speed_flags(p)
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("evaluate", help="3D Dice of a fine-tuned checkpoint on the test volumes")
    _common(p, "CSV file for the per-volume scores")
    p.add_argument("--checkpoint", required=True, metavar="CKPT")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("experiment", help="the low-label grid; appends to OUT/results.csv and resumes")
    _common(p, "grid folder (default runs/experiment-PROFILE)")
    p.add_argument("--inits", nargs="+", choices=INIT_CHOICES, default=list(INIT_CHOICES))
    p.add_argument("--n-labelled", nargs="+", type=_positive_int, default=[1, 2])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--finetune-loss", choices=FINETUNE_LOSSES, default=None,
                   help="fine-tuning loss (default dice+ce; glcl: GLCL's 1 - Dice per image and class)")
    p.add_argument("--finetune-iterations", type=_positive_int, default=None, metavar="N",
                   help="override the profile's fine-tuning iterations (pre-training keeps the profile's)")
    p.add_argument("--probe", action="store_true",
                   help="frozen-representation probe: keep the pre-trained encoder (and local-stage decoder blocks) "
                        "fixed and train the rest")
    p.add_argument("--shipped", action="store_true",
                   help="use the shipped pre-trained checkpoints (glcl_core/pretrained) instead of pre-training; "
                        "refused when their configuration differs from this run's")
    p.add_argument("--shared", action="store_true",
                   help="work through the grid together with other processes started with the same command and "
                        "--shared (one per core or GPU): each takes the cells no other one is running")
    _preset_flag(p, "every initialisation's global stage (each keeps its own strategy)")
    _budget_flag(p)
    _speed_flags(p)
    p.set_defaults(func=_cmd_experiment)
    return parser
