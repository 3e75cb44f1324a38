"""Looking inside the local stage: decoder feature maps, pixel similarity maps, mask counts and a small ablation.

The local contrastive loss (Chaitanya et al. 2020) trains the first ``l`` decoder blocks and the 1x1-conv head g2
on top of a frozen, globally pre-trained encoder. This module does not train anything itself: it reuses the
stages of :mod:`glcl_core.train.loops` and only extracts, compares and tabulates.

* :func:`feature_maps`: g2 (or plain decoder) maps of a stack of slices, in evaluation mode.
* :func:`similarity_map`: cosine similarity of every pixel's feature vector with one chosen pixel.
* :func:`random_local_model`: the starting point of the local stage (pre-trained encoder, fresh decoder and g2).
* :func:`landmarks`: one interior pixel per tissue class of a labelled slice (for similarity widgets).
* :func:`similarity_summary`: minimum and per-region medians of similarity maps (the numbers behind a figure).
* :func:`mask_counts`: positives and negatives per anchor region of a local strategy on a batch's metadata.
* :func:`chance_loss`: the local loss of features that carry no information, ``log(1 + negatives)``.
* :func:`local_ablation`: for each setting and seed, local pre-training from one shared global encoder, a short
  fine-tune with a labelled volume, and Dice on the validation volumes -> one table (means and sd over seeds).
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
import torch.nn.functional as F

from glcl_core.data.split import Split, draw_labelled
from glcl_core.data.volume import Volume
from glcl_core.models import LocalHead, UNet, load_pretrained
from glcl_core.strategies import SPARSE_NEGATIVES, local_masks, local_region_corners, resolve_local_negatives
from glcl_core.train.config import LocalConfig, RunConfig
from glcl_core.train.loops import (
    StageResult, build_local_head, build_model, evaluate, finetune, pretrain_global, pretrain_local,
)

__all__ = [
    "feature_maps",
    "similarity_map",
    "random_local_model",
    "calibrated",
    "landmarks",
    "similarity_summary",
    "mask_counts",
    "negatives_per_anchor",
    "chance_loss",
    "middle_slices",
    "setting_name",
    "Ablation",
    "local_ablation",
]

LOCAL_FIELDS = tuple(f.name for f in dataclasses.fields(LocalConfig))


# ----------------------------------------------------------------------------------------------- features
def _as_image_batch(images: Any) -> torch.Tensor:
    """``(H, W)``, ``(N, H, W)`` or ``(N, 1, H, W)`` array/tensor -> ``(N, 1, H, W)`` float32 tensor."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    x = x.to(torch.float32)
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"images must be (H, W), (N, H, W) or (N, 1, H, W), got {tuple(x.shape)}")
    return x


@torch.no_grad()
def feature_maps(
    model: UNet,
    head: torch.nn.Module | None,
    images: Any,
    n_blocks: int,
    device: torch.device | str | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """Feature maps after decoder block ``n_blocks`` and the local head g2 (if ``head`` is given).

    Args:
        model: a U-Net (its encoder and first ``n_blocks`` decoder blocks are used).
        head: g2 (:class:`~glcl_core.models.LocalHead`), or ``None`` for the decoder output itself.
        images: ``(H, W)``, ``(N, H, W)`` or ``(N, 1, H, W)`` slices (numpy or torch).
        n_blocks: decoder block ``l`` (1-based; 0 = bottleneck).
        device: where to compute (default: where the model is).

    Returns:
        ``(N, C, h, w)`` float32 on the CPU. Modules run in evaluation mode and are put back as they were.
    """
    x = _as_image_batch(images)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    modules = [m for m in (model, head) if m is not None]
    modes = [m.training for m in modules]
    for m in modules:
        m.to(device).eval()
    try:
        out = []
        for start in range(0, x.shape[0], batch_size):
            f = model.decode(model.encode(x[start:start + batch_size].to(device)), n_blocks=n_blocks)
            if head is not None:
                f = head(f)
            out.append(f.float().cpu())
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    return torch.cat(out)


def similarity_map(maps: Any, y: int, x: int, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Cosine similarity of every pixel's feature vector with the feature vector at pixel ``(y, x)``.

    Args:
        maps: one feature map ``(C, h, w)`` (or ``(1, C, h, w)``), numpy or torch.
        y, x: the chosen pixel, in the coordinates of the output (image pixels when ``size`` is given).
        size: ``(H, W)`` (or ``H`` for square) to upsample the map to first (bilinear), e.g. the image size when
            the map comes from a coarser decoder block; ``None`` keeps the map's own grid.

    Returns:
        ``(H, W)`` float32 array in ``[-1, 1]``; the chosen pixel itself is 1 (unless its feature is all zero).
    """
    f = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps).detach().float().cpu()
    if f.dim() == 4 and f.shape[0] == 1:
        f = f[0]
    if f.dim() != 3:
        raise ValueError(f"maps must be (C, h, w) or (1, C, h, w), got {tuple(f.shape)}")
    if size is not None:
        hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
        if tuple(f.shape[-2:]) != hw:
            f = F.interpolate(f[None], size=hw, mode="bilinear", align_corners=False)[0]
    h, w = f.shape[-2:]
    if not (0 <= int(y) < h and 0 <= int(x) < w):
        raise ValueError(f"pixel ({y}, {x}) is outside the {h}x{w} map")
    unit = F.normalize(f, dim=0)  # per-pixel L2 normalisation over channels
    return torch.einsum("chw,c->hw", unit, unit[:, int(y), int(x)]).numpy().astype(np.float32)


def random_local_model(
    cfg: RunConfig, init: StageResult | dict | None = None, n_blocks: int | None = None, seed: int = 0
) -> tuple[UNet, LocalHead]:
    """The local stage's starting point: encoder from ``init`` (a global stage or a state dict; ``None`` keeps it
    random too), decoder blocks and g2 freshly initialised from ``seed``. Nothing is trained.

    The decoder's batch-norm running statistics are still the initial 0 and 1; see :func:`calibrated`."""
    n_blocks = cfg.local.decoder_blocks if n_blocks is None else int(n_blocks)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = build_model(cfg)
        head = build_local_head(cfg, model, n_blocks)  # g2 (and region projection) as cfg.local builds them
    finally:
        torch.random.set_rng_state(state)  # leave the caller's random stream as it was
    if init is not None:
        weights = init.weights() if isinstance(init, StageResult) else init
        load_pretrained(model, weights, parts=("encoder",))
    model.eval()
    head.eval()
    return model, head


@torch.no_grad()
def calibrated(model: UNet, images: Any, n_blocks: int, batch_size: int = 32) -> UNet:
    """A copy of ``model`` whose first ``n_blocks`` decoder blocks have their batch-norm running statistics
    re-estimated on ``images`` (a plain average over the slices, as in training mode); all weights unchanged.

    In evaluation mode batch norm uses running statistics. A random decoder still has the initial ones (mean 0,
    variance 1), and a short local stage has moved them only part of the way. Re-estimating them on the same
    slices for every model compares the features themselves, as the loss sees them in training.
    """
    import copy

    x = _as_image_batch(images)
    device = next(model.parameters()).device
    clone = copy.deepcopy(model).eval()
    norms = [m for m in clone.decoder[:n_blocks].modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
        m.train()
    for start in range(0, x.shape[0], batch_size):
        clone.decode(clone.encode(x[start:start + batch_size].to(device)), n_blocks=n_blocks)
    for m in norms:
        m.momentum = 0.1
        m.eval()
    return clone


def landmarks(label: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, tuple[int, int]]:
    """One pixel deep inside each class present in a 2D label map: the pixel farthest from any other class.

    Returns ``{name: (y, x)}`` in class order (names from ``class_names``, else ``"class k"``).
    """
    from scipy.ndimage import distance_transform_edt

    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be a 2D slice, got shape {label.shape}")
    points: dict[str, tuple[int, int]] = {}
    for k in np.unique(label):
        inside = label == k
        depth = distance_transform_edt(inside)
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        name = class_names[int(k)] if class_names is not None and int(k) < len(class_names) else f"class {int(k)}"
        points[str(name)] = (int(y), int(x))
    return points


def similarity_summary(maps: Mapping[str, Any], y: int, x: int, label: Any,
                       class_names: Sequence[str] | None = None, border: int = 4, short_names: bool = True):
    """Numbers behind a similarity figure: the minimum of each map and its median over regions of the slice.

    Args:
        maps: ``{name: (C, h, w)}`` feature maps of one slice (upsampled to the label's size, as in
            :func:`~glcl_core.viz.local.plot_similarity`).
        y, x: the chosen pixel (image coordinates).
        label: the label slice ``(H, W)``; class 0 is the background.
        class_names: names of the classes (default ``"class k"``).
        border: width in pixels of the image border, reported as a region of its own.
        short_names: name each column by the first word of its map's name (``"(a) random ..."`` -> ``"(a)"``)
            when these are distinct.

    Returns:
        pandas.DataFrame, one column per map; rows ``minimum``, ``median, whole slice``, ``median, image border
        (N px)``, ``median, <background> inside the border``, then ``median, <class>`` for each foreground class
        present (these include pixels in the border).
    """
    import pandas as pd

    lab = np.asarray(label)
    if lab.ndim != 2:
        raise ValueError(f"label must be a 2D slice, got shape {lab.shape}")
    names = [str(class_names[k]) if class_names is not None and k < len(class_names) else f"class {k}"
             for k in range(int(lab.max()) + 1)]
    frame = np.zeros(lab.shape, bool)
    if border > 0:
        frame[:border], frame[-border:], frame[:, :border], frame[:, -border:] = True, True, True, True
    regions = {"whole slice": np.ones(lab.shape, bool), f"image border ({border} px)": frame,
               f"{names[0]} inside the border": (lab == 0) & ~frame,
               **{names[k]: lab == k for k in range(1, len(names)) if (lab == k).any()}}
    keys = list(maps)
    if short_names and len({k.split()[0] if k.split() else k for k in keys}) == len(keys):
        columns = [k.split()[0] if k.split() else k for k in keys]
    else:
        columns = keys
    out = {}
    for column, key in zip(columns, keys):
        sim = similarity_map(maps[key], y, x, size=lab.shape)
        out[column] = {"minimum": float(sim.min()),
                       **{f"median, {r}": float(np.median(sim[m])) if m.any() else float("nan")
                          for r, m in regions.items()}}
    return pd.DataFrame(out)


def middle_slices(volumes: Sequence[Volume], partitions: Sequence[int], n_partitions: int = 4):
    """The middle slice of each chosen partition of each volume, as a :class:`~glcl_core.batch.Batch` ordered
    volume-major like the partition sampler's (``volume`` = index in ``volumes``, ``image`` = row number)."""
    from glcl_core.batch import Batch

    images, labels, volume, partition, position = [], [], [], [], []
    for i, v in enumerate(volumes):
        parts = v.partitions(n_partitions)
        for s in partitions:
            members = np.flatnonzero(parts == int(s))
            if members.size == 0:
                raise ValueError(f"{v.name} has no slice in partition {s} of {n_partitions}")
            k = int(members[members.size // 2])
            images.append(v.image[k])
            labels.append(v.label[k] if v.label is not None else None)
            volume.append(i)
            partition.append(int(s))
            position.append(float(v.positions[k]))
    has_labels = all(lab is not None for lab in labels)
    return Batch(
        images=torch.from_numpy(np.stack(images)).float()[:, None],
        labels=torch.from_numpy(np.stack(labels)).long() if has_labels else None,
        image=torch.arange(len(images)),
        volume=torch.tensor(volume),
        partition=torch.tensor(partition),
        position=torch.tensor(position, dtype=torch.float64),
    )


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
    8) for LD. ``negatives=None`` resolves as in :func:`~glcl_core.strategies.resolve_local_negatives`.
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

    1. :func:`~glcl_core.train.loops.pretrain_local` on ``split.pool`` from the shared global encoder ``init``
       (pre-trained here once with ``cfg`` if ``None``);
    2. :func:`~glcl_core.train.loops.finetune` with ``cfg.finetune`` on ``labelled`` (default: one volume drawn
       from the pool with the seed), for a fixed number of iterations with no checkpoint selection;
    3. :func:`~glcl_core.train.loops.evaluate` on ``split.val``. The test volumes are never touched: choosing a
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
                local = pretrain_local(run_cfg, split.pool, init=init, device=device, progress=progress)
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
