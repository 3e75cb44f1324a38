"""Command line: ``python -m glcl_core <command>``.

Errors from bad arguments or paths print one line and exit with code 2 (no traceback).

Several GPUs or machines: launch the same command with ``torchrun``, e.g.
``torchrun --nproc-per-node 4 -m glcl_core pretrain --profile gpu --data PATH --out runs/pre``; rank 0 prints and
writes the run folder (see :mod:`glcl_core.distributed`).
"""
from __future__ import annotations

import argparse
import contextlib
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


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _existing(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CLIError(f"{p}: no such file or folder")
    return p


def _config(args: argparse.Namespace, **overrides):
    from glcl_core.train.config import make_config

    data = {"path": str(_existing(args.data)) if args.data else None}
    for key in ("embedded", "channel", "n_test", "n_val"):
        if getattr(args, key, None) is not None:
            data[key] = getattr(args, key)
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
    path = _existing(args.data) if args.data else embedded_dataset(params=args.embedded)
    volumes = load_volumes(path)
    print(f"data: {path}  ({time.perf_counter() - t0:.1f} s)")
    print(summarize(volumes))


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
    split = _split(cfg)
    name = cfg.global_.strategy + (f"+{args.local}" if args.local else "")
    out = Path(args.out or f"runs/pretrain-{name}")
    print(f"pre-training {name} on the training pool ({split}) -> {out}")
    # a bar in a terminal; one line per logged step in a log file or a pipe
    progress = None if sys.stdout.isatty() else "lines"
    g = pretrain_global(cfg, split.pool, out=out / "global", resume=args.resume, overwrite=args.overwrite,
                        val=split.val, progress=progress)
    print(f"global stage: {_health_summary(g.history)}; weights {out / 'global' / 'final.pt'}")
    if args.local:
        # init from the stage's weights in memory (the same as global/final.pt, and on every rank without a shared disk)
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
    cfg = _config(args, **overrides)
    split = _split(cfg)
    labelled = draw_labelled(split.pool, args.n_labelled, args.seed)
    out = Path(args.out or f"runs/finetune-n{args.n_labelled}-s{args.seed}")
    print(f"fine-tuning on {[v.name for v in labelled]} from {init or 'random init'} -> {out}")
    result = finetune(cfg, labelled, split.val, init=init, out=out, resume=args.resume, overwrite=args.overwrite)
    if not is_main():  # every rank holds the same weights: rank 0 tests and writes
        return
    scores = evaluate(result.model, split.test, n_classes=cfg.model.n_classes, class_names=class_names_of(cfg))
    scores.to_csv(out / "metrics.csv", index=False)
    _print_scores(scores, len(split.test))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from glcl_core.experiment import class_names_of, prepare_split
    from glcl_core.distributed import is_main
    from glcl_core.train.checkpoint import load_checkpoint
    from glcl_core.train.loops import build_model, evaluate

    ckpt_path = _existing(args.checkpoint)
    if not is_main():  # nothing to share out: rank 0 evaluates
        return
    cfg = _config(args)
    ckpt = load_checkpoint(ckpt_path)
    model = build_model(cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError) as err:
        raise CLIError(f"{ckpt_path}: does not fit the {cfg.profile} profile's model ({str(err)[:200]})") from err
    split = prepare_split(cfg)
    scores = evaluate(model, split.test, n_classes=cfg.model.n_classes, class_names=class_names_of(cfg))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        scores.to_csv(args.out, index=False)
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
                   help="Decathlon, ACDC or image/label folder (default: the embedded data set)")
    _embedded_flag(p)
    p.add_argument("--channel", type=int, default=None, help="image channel of multi-channel data (default 0)")
    p.add_argument("--n-test", type=_non_negative_int, default=None, metavar="N",
                   help="subjects held out for testing (default 6; a subject's volumes, e.g. ACDC ED and ES, stay together)")
    p.add_argument("--n-val", type=_non_negative_int, default=None, metavar="N",
                   help="subjects for model selection (default 2)")
    p.add_argument("--profile", choices=PROFILES, default=None,
                   help="ci (seconds), cpu (minutes), gpu (paper scale); default from GLCL_PROFILE, else the device")
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
    p.set_defaults(func=_cmd_data)

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
    args = build_parser().parse_args(argv)  # argparse itself exits with code 2 on bad arguments
    from glcl_core import distributed
    from glcl_core.data import DataError
    from glcl_core.train.checkpoint import RunExistsError

    # joins torchrun's process group (a no-op unless launched by torchrun with several processes)
    joined = not distributed.is_distributed() and distributed.init_distributed()
    # under torchrun only rank 0 prints (errors still reach stderr from every rank)
    quiet = open(os.devnull, "w") if not distributed.is_main() else None
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            args.func(args)
    except (CLIError, DataError, RunExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # configuration problems (too few volumes, unknown fields, ...)
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if quiet is not None:
            quiet.close()
        if joined:
            distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
