"""Low-label fine-tuning: the segmentation losses and the stage that trains a U-Net on labelled slices from a
pre-trained (or random) initialisation, keeping the weights with the best validation Dice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from glcl_core import distributed
from glcl_core.augment import augment_pair
from glcl_core.data.volume import Volume
from glcl_core.device import default_device
from glcl_core.models import load_pretrained
from glcl_core.samplers import LabelledSliceSampler
from glcl_core.train.config import RunConfig
from glcl_core.train.engine import GeneratorState, run_loop
from glcl_core.train.evaluation import EVAL_RESOLUTIONS, evaluate
from glcl_core.train.stages import (
    StageResult, _adam, _autocast, _full, _grad_scaler, _history_table, _init_state, _input, _ModuleState,
    _optimiser_step, _prepare, _run_folder, _save_final, _seed_everything, build_model,
)


# --------------------------------------------------------------------------------------------- stage 3: fine-tune
SEGMENTATION_LOSSES = ("dice", "dice+ce", "glcl")
GLCL_DICE_EPSILON = 1e-10  # added to the Dice denominator only (GLCL's losses.py); no smoothing in the numerator


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str = "dice+ce") -> torch.Tensor:
    """Fine-tuning loss of a batch of slices.

    Args:
        logits: ``(B, K, H, W)`` raw scores (softmax over K inside).
        labels: ``(B, H, W)`` int64 in ``0..K-1``.
        kind: which loss (probabilities ``p = softmax(logits)``, one-hot reference ``r``):

            * ``"glcl"``: GLCL's fine-tuning loss (the default of the official code's loss switch):
              ``1 - mean over images b and classes k, background included, of
              2 sum_hw p r / (sum_hw p + sum_hw r + 1e-10)``. Dice per image and class, then averaged; a class
              absent from an image and (almost) from its prediction contributes Dice ~ 0 and no gradient.
            * ``"dice"``: one soft Dice per foreground class with sums over the whole batch,
              ``(2 sum p r + 1e-5) / (sum p + sum r + 1e-5)``, ``1 -`` its mean over classes ``1..K-1``.
            * ``"dice+ce"``: ``"dice"`` plus the mean pixel-wise cross-entropy (neither paper's loss; PCL
              fine-tunes with cross-entropy alone).

    Returns:
        Scalar loss. Under torchrun every term is taken over the global batch (every rank's share): the batch-wide
        Dice sums are summed across ranks; for ``"glcl"`` the per-image Dice terms and their count are summed
        across ranks, so the mean runs over all images of the global batch. Every rank then holds the
        single-process loss of that batch.
    """
    if kind not in SEGMENTATION_LOSSES:
        raise ValueError(f"unknown segmentation loss {kind!r}; choose one of {', '.join(SEGMENTATION_LOSSES)}")
    logits = _full(logits)
    n_classes = logits.shape[1]
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(labels, n_classes).permute(0, 3, 1, 2).to(probs.dtype)
    if kind == "glcl":
        intersection = (probs * onehot).sum((2, 3))  # (B, K)
        denominator = probs.sum((2, 3)) + onehot.sum((2, 3)) + GLCL_DICE_EPSILON
        dice = 2 * intersection / denominator  # (B, K): per image and class, background included
        count = torch.tensor(float(dice.numel()), dtype=dice.dtype, device=dice.device)
        totals = distributed.all_reduce_with_grad(torch.stack([dice.sum(), count]))
        return 1 - totals[0] / totals[1].detach()
    dims = (0, 2, 3)
    intersection = distributed.all_reduce_with_grad((probs * onehot).sum(dims))
    denominator = distributed.all_reduce_with_grad(probs.sum(dims) + onehot.sum(dims))
    dice = (2 * intersection + 1e-5) / (denominator + 1e-5)
    loss = 1 - dice[1:].mean()  # foreground classes only
    if kind == "dice+ce":
        loss = loss + distributed.mean_over_ranks(F.cross_entropy(logits, labels), labels.numel())
    return loss


def finetune(
    cfg: RunConfig,
    labelled: list[Volume],
    val: list[Volume],
    init: "StageResult | dict | str | Path | None" = None,
    init_parts: tuple[str, ...] | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    val_resolution: str = "native",
) -> StageResult:
    """Fine-tune a U-Net on the labelled volumes; keep the weights with the best validation Dice.

    ``init=None`` is random initialisation. By default a global-stage init loads the encoder, a local-stage init
    the encoder and its pre-trained decoder blocks (``init_parts`` overrides). The segmentation head is always new.
    With ``cfg.finetune.freeze`` the run is a frozen-representation probe: the encoder and the loaded decoder blocks
    stay as they are (weights and norm statistics) and only the remaining layers are trained.
    ``val_resolution``: grid of the validation Dice, ``"native"`` (each volume's own grid where it carries one,
    as GLCL's model selection does) or ``"resampled"`` (see :func:`evaluate`).
    """
    fc = cfg.finetune
    if not labelled:
        raise ValueError("finetune needs at least one labelled volume")
    if fc.loss not in SEGMENTATION_LOSSES:
        raise ValueError(f"unknown finetune.loss {fc.loss!r}; choose one of {', '.join(SEGMENTATION_LOSSES)}")
    if val_resolution not in EVAL_RESOLUTIONS:
        raise ValueError(f"val_resolution must be one of {EVAL_RESOLUTIONS}, got {val_resolution!r}")
    for v in list(labelled) + list(val):
        if v.label is None:
            raise ValueError(f"{v.source or v.name}: fine-tuning and validation volumes need labels")
        if int(v.label.max()) >= cfg.model.n_classes:
            raise ValueError(f"{v.source or v.name}: label {int(v.label.max())} >= n_classes={cfg.model.n_classes}")
    device = torch.device(device) if device is not None else default_device()
    with _run_folder(out, cfg, resume, overwrite, "finetune") as out_dir:
        return _finetune(cfg, labelled, val, init, init_parts, out_dir, resume, device, progress, val_resolution)


def _finetune(cfg: RunConfig, labelled: list[Volume], val: list[Volume],
              init: "StageResult | dict | str | Path | None", init_parts: tuple[str, ...] | None,
              out_dir: Path | None, resume: bool, device: torch.device, progress: bool | str | None,
              val_resolution: str) -> StageResult:
    fc = cfg.finetune
    aug_gen = _seed_everything(cfg.seed)
    model = build_model(cfg)
    loaded: list[str] = []
    frozen_units = ["encoder"] if fc.freeze else []
    if init is not None:
        state, stage = _init_state(init)
        parts = init_parts or (("encoder", "decoder") if stage in ("local", "model") else ("encoder",))
        summary = load_pretrained(model, state, parts=parts)
        loaded = list(parts)
        if fc.freeze and stage == "local":  # the decoder blocks the local stage trained (the others are fresh)
            trained_blocks = {f"decoder.{i}" for i in range(cfg.local.decoder_blocks)}
            frozen_units += [u for u in summary.loaded_prefixes if u in trained_blocks]
    frozen = [model.get_submodule(u) for u in frozen_units]
    for module in frozen:
        module.requires_grad_(False)
    model.to(device)
    sampler = LabelledSliceSampler(labelled, batch_size=fc.batch_size, seed=cfg.seed)
    sampler.shard(distributed.rank(), distributed.world_size())
    net = _prepare(cfg, model)
    optimiser = _adam([q for q in model.parameters() if q.requires_grad], fc.lr)
    scaler = _grad_scaler(device)
    best: dict[str, Any] = {"dice": -1.0, "step": 0, "weights": None}

    def step(i: int) -> dict[str, float]:
        model.train()
        for module in frozen:  # frozen layers keep their norm statistics too
            module.eval()
        batch = sampler.sample().to(device, non_blocking=True)
        images, labels = augment_pair(batch.images, batch.labels, aug_gen)
        with _autocast(device):
            logits = net(_input(images, cfg))
        loss = segmentation_loss(logits, labels, fc.loss)
        _optimiser_step(loss, optimiser, scaler)
        metrics = {"loss": loss.item()}
        if val and ((i + 1) % fc.eval_every == 0 or i + 1 == fc.iterations):
            val_dice = float(evaluate(model, val, device=device, n_classes=cfg.model.n_classes,
                                      resolution=val_resolution)["dice"].mean())
            metrics["val_dice"] = val_dice
            if val_dice > best["dice"]:
                best.update(dice=val_dice, step=i + 1,
                            weights={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        return metrics

    def restore(extra: dict[str, Any]) -> None:
        best.update(extra.get("best", {}))

    result = run_loop(
        step,
        {"model": _ModuleState(model), "optimiser": optimiser, "sampler": sampler,
         "augment": GeneratorState(aug_gen)},
        iterations=fc.iterations, out=out_dir, resume=resume, checkpoint_every=fc.checkpoint_every,
        log_every=min(fc.log_every, fc.eval_every), images_per_step=fc.batch_size,
        desc=f"fine-tune n={len(labelled)}", progress=progress,
        on_checkpoint=lambda: {"best": dict(best)}, on_restore=restore,
    )
    if best["weights"] is not None:  # model selection on validation volumes only
        model.load_state_dict(best["weights"])
    model.eval()
    out_dir = _save_final(out_dir, {"model": model.state_dict(), "stage": "finetune",
                                    "best_step": best["step"], "best_val_dice": best["dice"]})
    history = _history_table(result.history)
    return StageResult(model, None, history, out_dir,
                       {"seconds": result.seconds, "cpu_seconds": result.cpu_seconds, "stage": "finetune",
                        "best_step": best["step"], "best_val_dice": best["dice"], "loaded": loaded,
                        "frozen": frozen_units})
