"""The subcommands of ``python -m glcl_core``: one ``_cmd_<name>(args)`` per subcommand (data, fetch, main,
pretrain, finetune, evaluate, experiment), each importing the library lazily and printing what it did.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from glcl_core.cli.checks import (
    CLIError,
    _check_out,
    _check_scores_file,
    _checked_checkpoint,
    _config,
    _data_folder,
    _existing,
    _say_if_fresh,
    _split,
)


def _cmd_data(args: argparse.Namespace) -> None:
    from glcl_core.data import embedded_dataset, load_volumes, summarize

    t0 = time.perf_counter()
    path = _data_folder(args.data) if args.data else embedded_dataset(params=args.embedded)
    volumes = load_volumes(path, channel=getattr(args, "channel", None))
    print(f"data: {path}  ({time.perf_counter() - t0:.1f} s)")
    print(summarize(volumes))


def _cmd_fetch(args: argparse.Namespace) -> None:
    from glcl_core.data.datasets import datasets_table
    from glcl_core.data.fetching import fetch

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
    from glcl_core.train.pretrain import pretrain_global, pretrain_local

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
    from glcl_core.train.evaluation import evaluate
    from glcl_core.train.finetuning import finetune

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
    from glcl_core.train.evaluation import evaluate
    from glcl_core.train.stages import build_model

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


def _shipped_settings_hint(inits) -> str:
    """The flags that ask for the settings the shipped checkpoints of ``inits`` were made with, as a hint for an
    error message (empty when none of them is shipped)."""
    from glcl_core.checkpoints import init_of, read_manifest
    from glcl_core.train.config import make_config

    for entry in read_manifest().values():
        if init_of(entry) not in inits:
            continue
        config = entry["config"]
        profile, embedded = config["profile"], config["data"].get("embedded")
        long_iterations = make_config(profile, budget="long").global_.iterations
        long = config["global_"]["iterations"] == long_iterations != make_config(profile).global_.iterations
        flags = f"--profile {profile}" + (" --budget long" if long else "") + (f" --embedded {embedded}" if embedded
                                                                            else "")
        return f"; the shipped checkpoints were made with {flags}"
    return ""


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
            raise CLIError(f"{err}{_shipped_settings_hint(args.inits)}") from err
    table = run_experiment(cfg, out, inits=args.inits, n_labelled=args.n_labelled, seeds=args.seeds,
                           pretrained=pretrained, shared=args.shared)
    per_seed = table.groupby(["strategy", "n_labelled", "seed"])["dice"].mean()
    summary = per_seed.groupby(["strategy", "n_labelled"]).agg(["mean", "std", "count"]).round(3)
    print(summary.to_string())
    print(f"results: {out / 'results.csv'}")
