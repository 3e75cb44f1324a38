"""The local stage in numbers: mask counts and chance loss of a local strategy, and a small ablation of its
settings (local pre-training, a short fine-tune, validation Dice; means and sd over seeds).

The local contrastive loss (Chaitanya et al. 2020) trains the first ``l`` decoder blocks and the 1x1-conv head g2
on top of a frozen, globally pre-trained encoder. This module does not train anything itself: it reuses the
stages of :mod:`glcl_core.train` and only extracts, compares and tabulates.

* :func:`mask_counts`: positives and negatives per anchor region of a local strategy on a batch's metadata.
* :func:`chance_loss`: the local loss of features that carry no information, ``log(1 + negatives)``.
* :func:`local_ablation`: for each setting and seed, local pre-training from one shared global encoder, a short
  fine-tune with a labelled volume, and Dice on the validation volumes -> one table (means and sd over seeds).

Feature and similarity maps are in :mod:`glcl_core.analysis.local_maps`, which re-exports this module's names.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from glcl_core.data.split import Split, draw_labelled
from glcl_core.data.volume import Volume
from glcl_core.contrastive.local_masks import local_masks
from glcl_core.contrastive.local_negatives import SPARSE_NEGATIVES, resolve_local_negatives
from glcl_core.train.config import LocalConfig, RunConfig
from glcl_core.train.evaluation import evaluate
from glcl_core.train.finetuning import finetune
from glcl_core.train.pretrain import pretrain_global, pretrain_local
from glcl_core.train.stages import StageResult

__all__ = [
    "mask_counts",
    "negatives_per_anchor",
    "chance_loss",
    "setting_name",
    "Ablation",
    "local_ablation",
]

LOCAL_FIELDS = tuple(f.name for f in dataclasses.fields(LocalConfig))


# ---------------------------------------------------------------------------------------------- mask counts
def mask_counts(
    strategy: str,
    image: Any,
    volume: Any,
    partition: Any,
    n_regions: int,
    n_negatives: int | None = None,
):
    """Positives and negatives per anchor region of a local strategy, one row per slice of the batch.

    Counts exclude the anchor itself. ``positives`` includes the same region in the other view; for ``LD`` also
    the same region (both views) of same-partition slices of other volumes. ``n_negatives=None`` is every other
    region. Every region and view of a slice has the same counts (checked), so one row per slice says it all.
    """
    image = torch.as_tensor(image)
    positives, negatives = local_masks(strategy, image, torch.as_tensor(volume), torch.as_tensor(partition),
                                       n_regions, n_negatives=n_negatives)
    pos = positives.to_dense()
    pos.fill_diagonal_(False)
    neg = negatives.to_dense()
    n_pos = pos.sum(1).reshape(image.shape[0], -1)  # (B, 2R)
    n_neg = neg.sum(1).reshape(image.shape[0], -1)
    import pandas as pd

    rows = []
    for b in range(image.shape[0]):
        for name, counts in (("positives", n_pos[b]), ("negatives", n_neg[b])):
            if counts.min() != counts.max():  # pragma: no cover - the strategies give equal counts per slice
                raise AssertionError(f"{name} differ between the regions of slice {b}")
        rows.append({"slice": b, "volume": int(torch.as_tensor(volume)[b]),
                     "partition": int(torch.as_tensor(partition)[b]),
                     "positives": int(n_pos[b, 0]), "negatives": int(n_neg[b, 0])})
    return pd.DataFrame(rows).set_index("slice")


def negatives_per_anchor(form: str, n_negatives: int | None, n_regions: int, strategy: str = "LR",
                         negatives: str | None = None, ld_negative_regions: int = 4) -> int:
    """How many negatives each anchor region (each positive pair, for the official L^D) has.

    ``n_negatives`` for random negatives; every other region in both views, ``2 (R - 1)``, for ``"all"`` (the
    dense default); the official table: 10 (5 regions x 2 views) for LR, ``2 x ld_negative_regions`` (official
    8) for LD. ``negatives=None`` resolves as in :func:`~glcl_core.contrastive.local_negatives.resolve_local_negatives`.
    """
    mode = resolve_local_negatives(form, negatives, n_negatives)
    if mode == "random":
        return SPARSE_NEGATIVES if n_negatives is None else int(n_negatives)
    if mode == "all":
        return 2 * (int(n_regions) - 1)
    return 2 * int(ld_negative_regions) if strategy == "LD" else SPARSE_NEGATIVES


def chance_loss(n_negatives: int) -> float:
    """The local loss when all similarities are equal (features carry no information): ``log(1 + n)``.

    Each term is ``-log(e^s / (e^s + n e^s))``, whatever the number of positives. A loss far below it means the
    network tells the positive apart from the negatives.
    """
    return math.log(1 + int(n_negatives))


# -------------------------------------------------------------------------------------------------- ablation
def setting_name(overrides: Mapping[str, Any] | None, defaults: LocalConfig | None = None) -> str:
    """A short readable name: ``"l=2"``, ``"K=5"``, ``"neg=2"``, ``"dense"``, ``"LD"``; ``None`` is
    ``"no local stage"``; ``{}`` (or only default values) is ``"default"``."""
    if overrides is None:
        return "no local stage"
    short = {"decoder_blocks": "l", "region_size": "K", "n_negatives": "neg", "iterations": "it",
             "temperature": "tau", "batch_size": "batch", "n_volumes": "m"}
    parts = []
    for key, value in overrides.items():
        if defaults is not None and getattr(defaults, key, object()) == value:
            continue
        if key in ("form", "strategy", "pooling"):
            parts.append(str(value))
        else:
            parts.append(f"{short.get(key, key)}={'all' if value is None else value}")
    return ", ".join(parts) or "default"


@dataclass
class Ablation:
    """What :func:`local_ablation` returns."""

    table: Any  # pandas.DataFrame, one row per setting (means over seeds)
    local: dict[str, StageResult] = field(default_factory=dict)  # local pre-training per setting (first seed)
    finetuned: dict[str, StageResult] = field(default_factory=dict)  # fine-tuned model per setting (first seed)
    dice: Any = None  # pandas.DataFrame: setting, seed, volume, class, dice (validation volumes)
    global_init: StageResult | None = None
    runs: Any = None  # pandas.DataFrame, one row per setting and seed


def _settings_dict(settings: Mapping[str, Any] | Sequence[Any], defaults: LocalConfig) -> dict[str, Any]:
    if isinstance(settings, Mapping):
        items = list(settings.items())
    else:
        items = [(setting_name(s, defaults), s) for s in settings]
    out: dict[str, Any] = {}
    for name, overrides in items:
        if name in out:
            raise ValueError(f"two settings are both called {name!r}; pass a dict name -> overrides")
        if overrides is not None:
            if not isinstance(overrides, Mapping):
                raise TypeError(f"setting {name!r} must be a dict of LocalConfig fields or None")
            unknown = sorted(set(overrides) - set(LOCAL_FIELDS))
            if unknown:
                raise ValueError(
                    f"setting {name!r}: unknown local field(s) {unknown}; valid: {', '.join(LOCAL_FIELDS)}"
                )
        out[str(name)] = None if overrides is None else dict(overrides)
    if not out:
        raise ValueError("local_ablation needs at least one setting")
    return out


def _tail_mean(history, column: str = "loss", fraction: float = 0.2) -> float:
    """Mean of the last ``fraction`` of the logged values (a single step's loss is noisy)."""
    if history is None or len(history) == 0 or column not in history:
        return float("nan")
    values = history[column].dropna().to_numpy()
    n = max(1, int(round(len(values) * fraction)))
    return float(values[-n:].mean())


def local_ablation(
    cfg: RunConfig,
    split: Split,
    settings: Mapping[str, Mapping[str, Any] | None] | Sequence[Mapping[str, Any] | None],
    init: StageResult | None = None,
    labelled: Sequence[Volume] | None = None,
    seeds: Sequence[int] | None = None,
    device: torch.device | str | None = None,
    class_names: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool | None = None,
) -> Ablation:
    """Compare local-stage settings: pre-train, fine-tune briefly, score on the validation volumes.

    For each setting (a dict of :class:`~glcl_core.train.config.LocalConfig` overrides such as ``decoder_blocks``,
    ``region_size``, ``n_negatives``, ``form``, ``strategy``; ``None`` = skip the local stage and fine-tune from
    the encoder alone) and each seed:

    1. :func:`~glcl_core.train.pretrain.pretrain_local` on ``split.pool`` from the shared global encoder ``init``
       (pre-trained here once with ``cfg`` if ``None``), without the held-out health measures (``health=False``:
       the same training; the stage histories hold the loss and ``loss_over_chance``);
    2. :func:`~glcl_core.train.finetuning.finetune` with ``cfg.finetune`` on ``labelled`` (default: one volume drawn
       from the pool with the seed), for a fixed number of iterations with no checkpoint selection;
    3. :func:`~glcl_core.train.evaluation.evaluate` on ``split.val``. The test volumes are never touched: choosing a
       setting is a choice, and choices are made on validation data.

    Within one seed every setting uses the same batches, augmentations and labelled volume: the settings differ
    only in what the local stage does. Across seeds the local stage, the fine-tuning (``RunConfig.seed``) and the
    labelled volume change, while the global stage ``init`` stays shared. With short stages, small numerical
    differences grow into large differences in Dice, so one seed does not rank settings; the spread over seeds
    shows how large a difference has to be before it means anything.

    Args:
        seeds: the seeds to run (default: ``(cfg.seed,)``, a single run per setting).
        labelled: the labelled volume(s) for fine-tuning, the same for every seed (default: one volume drawn from
            the pool per seed, :func:`~glcl_core.data.split.draw_labelled`).
        settings: ``{name: overrides}`` or a list of overrides (named by :func:`setting_name`).
        class_names: names for the Dice columns (default: class indices).
        log: called with one line per finished run (e.g. ``print``).
        progress: progress bars of the stages (``None``: in notebooks and terminals).

    Returns:
        :class:`Ablation` with

        * ``table``, one row per setting: the local settings (``strategy``, ``form``, ``decoder_blocks``,
          ``region_size``, ``negatives`` per anchor); ``loss_start``/``loss_end``, the mean local loss over the
          first/last 20 % of logged steps, averaged over seeds; ``chance`` (:func:`chance_loss`); ``val_dice``,
          the mean over seeds of the validation Dice (each seed: mean over validation volumes and foreground
          classes); ``val_dice_sd``, its standard deviation over seeds (``ddof=1``, NaN for one seed);
          ``n_seeds``; one ``dice <class>`` column per class (mean over volumes, then over seeds); ``seconds``,
          the wall time summed over seeds;
        * ``runs``, the same columns per setting and seed (``seed``, ``labelled`` = names of the labelled
          volumes, ``val_dice``, ``dice <class>``, ...), from which ``table`` is computed;
        * ``local``/``finetuned``: the stage results per setting for the first seed;
        * ``dice``: the per-volume, per-class Dice of every run.
    """
    import pandas as pd

    named = _settings_dict(settings, cfg.local)
    if not split.val:
        raise ValueError("local_ablation needs validation volumes (split.val is empty)")
    seeds = [int(cfg.seed)] if seeds is None else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("local_ablation needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {seeds}")
    if init is None:
        init = pretrain_global(cfg, split.pool, device=device, progress=progress)
    labelled_of = {s: list(labelled) if labelled is not None else draw_labelled(split.pool, 1, seed=s)
                   for s in seeds}
    n_classes = cfg.model.n_classes
    rows, dice_tables = [], []
    result = Ablation(table=None, global_init=init)
    for name, overrides in named.items():
        for seed in seeds:
            run_cfg = RunConfig.from_dict(cfg.to_dict())
            run_cfg.seed = seed
            for key, value in (overrides or {}).items():
                setattr(run_cfg.local, key, value)
            lc = run_cfg.local
            t0 = time.perf_counter()
            row: dict[str, Any] = {"setting": name, "seed": seed,
                                   "labelled": ", ".join(v.name for v in labelled_of[seed])}
            if overrides is None:
                start = init
                row.update({"strategy": "-", "form": "-", "decoder_blocks": 0, "region_size": np.nan,
                            "negatives": np.nan, "loss_start": np.nan, "loss_end": np.nan, "chance": np.nan})
            else:
                # the table and the curves read the loss only: no held-out health measures (same training)
                local = pretrain_local(run_cfg, split.pool, init=init, device=device, progress=progress,
                                       health=False)
                if seed == seeds[0]:
                    result.local[name] = local
                h, w = local.model.feature_shape(lc.decoder_blocks)
                n_regions = 13 if lc.form == "sparse" else (h // lc.region_size) * (w // lc.region_size)
                n_neg = negatives_per_anchor(lc.form, lc.n_negatives, n_regions, strategy=lc.strategy,
                                             negatives=lc.negatives, ld_negative_regions=lc.ld_negative_regions)
                hist = local.history
                first = (float(hist["loss"].dropna().iloc[: max(1, len(hist) // 5)].mean()) if len(hist)
                         else np.nan)
                row.update({"strategy": lc.strategy, "form": lc.form, "decoder_blocks": lc.decoder_blocks,
                            "region_size": lc.region_size, "negatives": n_neg, "loss_start": first,
                            "loss_end": _tail_mean(hist), "chance": chance_loss(n_neg)})
                start = local
            # no validation volumes inside fine-tuning: fixed length, no checkpoint selection, one evaluation below
            tuned = finetune(run_cfg, labelled_of[seed], [], init=start, device=device, progress=progress)
            if seed == seeds[0]:
                result.finetuned[name] = tuned
            dice = evaluate(tuned.model, split.val, device=device, n_classes=n_classes, class_names=class_names)
            dice.insert(0, "setting", name)
            dice.insert(1, "seed", seed)
            dice_tables.append(dice)
            row["val_dice"] = float(np.nanmean(dice["dice"].to_numpy()))
            for cls, value in dice.groupby("class", sort=False)["dice"].mean().items():
                row[f"dice {cls}"] = float(value)
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            if log is not None:
                which = f"{name}" if len(seeds) == 1 else f"{name}, seed {seed}"
                log(f"{which}: val Dice {row['val_dice']:.3f} ({row['seconds']:.0f} s)")
    runs = pd.DataFrame(rows)
    runs["decoder_blocks"] = runs["decoder_blocks"].astype(int)
    result.runs = runs
    result.table = _summarise_runs(runs)
    result.dice = pd.concat(dice_tables, ignore_index=True)
    return result


def _summarise_runs(runs):
    """One row per setting (in the order of ``runs``): means over seeds, ``val_dice_sd`` and ``n_seeds``."""
    import pandas as pd

    fixed = ["strategy", "form", "decoder_blocks", "region_size", "negatives", "chance"]
    dice_cols = [c for c in runs.columns if c.startswith("dice ")]
    groups = runs.groupby("setting", sort=False)
    table = groups[fixed].first()
    table["loss_start"] = groups["loss_start"].mean()
    table["loss_end"] = groups["loss_end"].mean()
    table["val_dice"] = groups["val_dice"].mean()
    table["val_dice_sd"] = groups["val_dice"].std(ddof=1)
    table["n_seeds"] = groups["seed"].nunique()
    for col in dice_cols:
        table[col] = groups[col].mean()
    table["seconds"] = groups["seconds"].sum()
    order = ["strategy", "form", "decoder_blocks", "region_size", "negatives", "loss_start", "loss_end", "chance",
             "val_dice", "val_dice_sd", "n_seeds", *dice_cols, "seconds"]
    table = table[order].reset_index()
    table["decoder_blocks"] = table["decoder_blocks"].astype(int)
    table["n_seeds"] = table["n_seeds"].astype(int)
    return pd.DataFrame(table)
