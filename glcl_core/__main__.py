"""Command line: ``python -m glcl_core <command>``.

Errors from bad arguments or paths (and files given as checkpoints that are not ones) print one line and exit with
code 2 (no traceback); a full disk prints one line naming the file and exits with code 1.

Several GPUs or machines: launch the same command with ``torchrun``, e.g.
``torchrun --nproc-per-node 4 -m glcl_core pretrain --profile gpu --data PATH --out runs/pre``; rank 0 prints and
writes the run folder (see :mod:`glcl_core.distributed`).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import time
from pathlib import Path

from glcl_core.profiles import PROFILES

# Kept here, not imported from experiment/train, so `--help` and argument errors stay fast (no torch import).
GLOBAL_CHOICES = ("GR", "GD-", "GD", "PCL")
LOCAL_CHOICES = ("LR", "LD")
INIT_CHOICES = ("random", "GR", "GD-", "GD", "PCL", "GD+LR", "GD+LD", "PCL+LR")
EMBEDDED_PRESETS = ("standard", "varied", "multicontrast")  # glcl_core.data.embedded.PRESETS
PRESET_CHOICES = ("pcl",)  # glcl_core.train.config.PRESETS
BUDGET_CHOICES = ("profile", "long")  # glcl_core.train.config.BUDGETS
FINETUNE_LOSSES = ("dice+ce", "dice", "glcl")  # glcl_core.train.loops.SEGMENTATION_LOSSES


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
    from glcl_core.data.fetch import DATASETS, fetch

    if not Path(path).expanduser().exists() and path.strip().lower() in {n.lower() for n in DATASETS}:
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
    from glcl_core.train.checkpoint import has_run

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


def _cmd_data(args: argparse.Namespace) -> None:
    from glcl_core.data import embedded_dataset, load_volumes, summarize

    t0 = time.perf_counter()
    path = _data_folder(args.data) if args.data else embedded_dataset(params=args.embedded)
    volumes = load_volumes(path, channel=getattr(args, "channel", None))
    print(f"data: {path}  ({time.perf_counter() - t0:.1f} s)")
    print(summarize(volumes))


def _cmd_fetch(args: argparse.Namespace) -> None:
    from glcl_core.data.fetch import datasets_table, fetch

    if args.list:
        print(datasets_table())
        return
    if not args.name:
        raise CLIError("name a data set to fetch (python -m glcl_core fetch --list shows them)")
    path = fetch(args.name, args.root, url=args.url)
    print(f"data: {path}  (pass it to --data)")


def _cmd_main(args: argparse.Namespace) -> None:
    """The README's main job: materialise the embedded data set and summarise it."""
    _cmd_data(args)


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from glcl_core.train.loops import pretrain_global, pretrain_local

    overrides: dict = {"global_": {"strategy": args.strategy} if args.strategy else {}}
    if args.local:
        overrides["local"] = {"strategy": args.local}
    if args.iterations:
        overrides["global_"]["iterations"] = args.iterations
        if args.local:
            overrides["local"]["iterations"] = args.iterations
    cfg = _config(args, **overrides)
    name = cfg.global_.strategy + (f"+{args.local}" if args.local else "")
    out = Path(args.out or f"runs/pretrain-{name}")
    _check_out(args, out)
    split = _split(cfg)
    print(f"pre-training {name} on the training pool ({split}) -> {out}")
    _say_if_fresh(args, out / "global")
    # a bar in a terminal; one line per logged step in a log file or a pipe
    progress = None if sys.stdout.isatty() else "lines"
    g = pretrain_global(cfg, split.pool, out=out / "global", resume=args.resume, overwrite=args.overwrite,
                        val=split.val, progress=progress)
    print(f"global stage: {_health_summary(g.history)}; weights {out / 'global' / 'final.pt'}")
    if args.local:
        # init from the stage's weights in memory (the same as global/final.pt, and on every rank without a shared disk)
        _say_if_fresh(args, out / "local")
        loc = pretrain_local(cfg, split.pool, init=g, out=out / "local", resume=args.resume, overwrite=args.overwrite,
                             val=split.val, progress=progress)
        print(f"local stage: {_health_summary(loc.history)}; weights {out / 'local' / 'final.pt'}")


def _health_summary(history) -> str:
    """The last logged loss and health measures of a pre-training stage, in one line."""
    last = history.iloc[-1]
    parts = [f"loss {last['loss']:.4f}"]
    names = {"loss_over_chance": "x chance", "retrieval_top1": "top-1 retrieval (val)",
             "effective_rank": "effective rank (val)"}
    for column, label in names.items():
        if column in history.columns:
            parts.append(f"{label} {last[column]:.3g}" if column != "loss_over_chance"
                         else f"{last[column]:.3f} {label}")
    return ", ".join(parts)


def _print_scores(scores, n_test: int) -> None:
    print(scores.groupby("class")["dice"].agg(["mean", "std"]).round(3).to_string())
    print(f"mean foreground Dice on {n_test} test volumes: {scores['dice'].mean():.3f} "
          f"({scores.attrs.get('resolution', 'resampled')} resolution)")


def _cmd_finetune(args: argparse.Namespace) -> None:
    from glcl_core.data.split import draw_labelled
    from glcl_core.distributed import is_main
    from glcl_core.experiment import class_names_of
    from glcl_core.train.loops import evaluate, finetune

    overrides: dict = {"finetune": {"n_labelled": args.n_labelled}}
    if args.iterations:
        overrides["finetune"]["iterations"] = args.iterations
    init = _existing(args.init) if args.init else None
    if init is not None:
        _checked_checkpoint(init, "finetune")  # a file that is not a checkpoint fails now, not after the data
    cfg = _config(args, **overrides)
    out = Path(args.out or f"runs/finetune-n{args.n_labelled}-s{args.seed}")
    _check_out(args, out)
    split = _split(cfg)
    labelled = draw_labelled(split.pool, args.n_labelled, args.seed)
    print(f"fine-tuning on {[v.name for v in labelled]} from {init or 'random init'} -> {out}")
    _say_if_fresh(args, out)
    result = finetune(cfg, labelled, split.val, init=init, out=out, resume=args.resume, overwrite=args.overwrite)
    if not is_main():  # every rank holds the same weights: rank 0 tests and writes
        return
    scores = evaluate(result.model, split.test, n_classes=cfg.model.n_classes, class_names=class_names_of(cfg))
    scores.to_csv(out / "metrics.csv", index=False)
    _print_scores(scores, len(split.test))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from glcl_core.experiment import class_names_of, prepare_split
    from glcl_core.distributed import is_main
    from glcl_core.train.loops import build_model, evaluate

    ckpt_path = _existing(args.checkpoint)
    if args.out:
        _check_out(args, Path(args.out), folder_out=False)
        _check_scores_file(Path(args.out))
    ckpt = _checked_checkpoint(ckpt_path, "evaluate")  # before any data is read
    if not is_main():  # nothing to share out: rank 0 evaluates
        return
    cfg = _config(args)
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError) as err:
        raise CLIError(f"{ckpt_path}: does not fit the {cfg.profile} profile's model ({str(err)[:200]})") from err
    split = prepare_split(cfg)
    scores = evaluate(model, split.test, n_classes=cfg.model.n_classes, class_names=class_names_of(cfg))
    if args.out:
        from glcl_core.train.checkpoint import atomic_write_text

        _check_scores_file(Path(args.out))  # again: it may have appeared while the model was evaluated
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out), scores.to_csv(index=False))
    _print_scores(scores, len(split.test))


def _cmd_experiment(args: argparse.Namespace) -> None:
    from glcl_core.experiment import run_experiment

    overrides: dict = {}
    if args.finetune_iterations:
        overrides["finetune"] = {"iterations": args.finetune_iterations}
    if args.probe:
        overrides.setdefault("finetune", {})["freeze"] = True
    cfg = _config(args, **overrides)
    out = Path(args.out or f"runs/experiment-{cfg.profile}{'-probe' if args.probe else ''}")
    _check_out(args, out)
    pretrained = None
    if args.shipped:
        from glcl_core.checkpoints import CheckpointError, shipped_weights

        try:
            pretrained = shipped_weights(cfg, args.inits)
        except CheckpointError as err:
            raise CLIError(str(err)) from err
    table = run_experiment(cfg, out, inits=args.inits, n_labelled=args.n_labelled, seeds=args.seeds,
                           pretrained=pretrained)
    per_seed = table.groupby(["strategy", "n_labelled", "seed"])["dice"].mean()
    summary = per_seed.groupby(["strategy", "n_labelled"]).agg(["mean", "std", "count"]).round(3)
    print(summary.to_string())
    print(f"results: {out / 'results.csv'}")


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
                        "varied: more anatomical and contrast variation between subjects; multicontrast: varied shapes, "
                        "T1-, T2- or PD-like tissue contrast per subject)")


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
                   help="subjects held out for testing (default 6; a subject's volumes, e.g. ACDC ED and ES, stay together)")
    p.add_argument("--n-val", type=_non_negative_int, default=None, metavar="N",
                   help="subjects for model selection (default 2)")
    p.add_argument("--profile", choices=PROFILES, default=None,
                   help="ci (seconds), cpu (minutes), gpu (paper scale); default from GLCL_PROFILE, else cpu")
    p.add_argument("--out", default=None, metavar="PATH", help=out_help)
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m glcl_core", description=__doc__.splitlines()[0])
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
    _preset_flag(p, "every initialisation's global stage (each keeps its own strategy)")
    _budget_flag(p)
    _speed_flags(p)
    p.set_defaults(func=_cmd_experiment)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # argparse itself exits with code 2 on bad arguments
    from glcl_core import distributed
    from glcl_core.data import DataError
    from glcl_core.train.checkpoint import RunExistsError
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


if __name__ == "__main__":
    sys.exit(main())
