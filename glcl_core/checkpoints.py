"""Shipped pre-trained weights: export a pre-training run's weights under a name, and load them by name with their
SHA-256 checked against the manifest.

A shipped checkpoint holds what fine-tuning loads (the U-Net's weights, no projection heads), the stage and strategy
that made it and its exact configuration. ``manifest.json`` beside the files records, per name: file, SHA-256, size,
dtype, the configuration, the command that recreates it, its wall time and the machine it ran on; where the wall
time does not cover the whole run, a ``wall_note`` says what it covers.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glcl_core.train.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from glcl_core.train.config import RunConfig

DEFAULT_FOLDER = Path(__file__).resolve().parent / "pretrained"
MANIFEST = "manifest.json"
# The embedded preset the shipped checkpoints were pre-trained on: the one where one labelled volume leaves room
# for pre-training to help (see the book's chapter 1 and results/label_headroom_cpu.csv).
SHIPPED_EMBEDDED = "multicontrast"


class CheckpointError(ValueError):
    """A shipped checkpoint is unknown, missing or does not match its manifest."""


@dataclass
class ShippedCheckpoint:
    """A verified checkpoint: ``path`` can be passed as ``init=`` to :func:`glcl_core.train.finetuning.finetune`."""

    name: str
    path: Path
    config: RunConfig
    entry: dict[str, Any]

    def model(self):
        """The U-Net its configuration names, with the shipped parts loaded (see :func:`pretrained_model`)."""
        return pretrained_model(self.path, self.config)


def pretrained_model(path: str | Path, cfg: RunConfig):
    """The U-Net ``cfg.model`` names, with the parts fine-tuning would load from the checkpoint ``path`` (a shipped
    file or a pre-training run's ``final.pt``) in float32: the encoder of a global stage, the encoder and decoder
    of a local stage; the other parts keep their fresh initialisation. Returned in eval mode, on the CPU."""
    from glcl_core.models import load_pretrained as load_parts
    from glcl_core.train.stages import build_model

    net = build_model(cfg)
    ckpt = load_checkpoint(path)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    load_parts(net, state, parts=shipped_parts(ckpt.get("stage", "model")))
    return net.eval()


def shipped_parts(stage: str) -> tuple[str, ...]:
    """The U-Net parts fine-tuning loads from a stage's weights (``glcl_core.train.finetuning.finetune``), and so the
    parts a shipped checkpoint keeps: the encoder of a global stage; the encoder and decoder of a local stage (its
    first blocks trained, the others as initialised). The segmentation head is always trained anew."""
    return ("encoder",) if stage == "global" else ("encoder", "decoder")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: str | Path | None = None) -> dict[str, dict[str, Any]]:
    path = Path(folder or DEFAULT_FOLDER) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); restore it with `git checkout -- {path}`") from err


def available(folder: str | Path | None = None) -> list[str]:
    return sorted(read_manifest(folder))


def export(run_checkpoint: str | Path, name: str, command: str, wall_seconds: float,
           folder: str | Path | None = None, dtype: str = "float32",
           wall_seconds_estimated: bool = False) -> dict[str, Any]:
    """Write the U-Net parts fine-tuning loads from a pre-training run's ``final.pt`` (its ``config.json`` beside
    it; see :func:`shipped_parts`) as ``name`` and record it in the manifest. ``dtype="float16"`` halves the file
    (check that Dice is unchanged first). ``wall_seconds_estimated`` marks a wall time scaled up from part of the
    run (a run interrupted and resumed); ``command`` stays a command that can be pasted."""
    run_checkpoint = Path(run_checkpoint)
    folder = Path(folder or DEFAULT_FOLDER)
    source = load_checkpoint(run_checkpoint)
    config = RunConfig.from_json(run_checkpoint.parent / "config.json")
    cast = torch.float16 if dtype == "float16" else torch.float32
    keep = shipped_parts(source.get("stage", "model"))
    weights = {k: (v.to(cast) if v.is_floating_point() else v) for k, v in source["model"].items()
               if k.split(".")[0] in keep}
    file = folder / f"{name.replace('+', '_')}.pt"
    save_checkpoint(file, {"model": weights, "stage": source.get("stage", "model"),
                           "strategy": source.get("strategy", ""), "config": json.dumps(config.to_dict())})
    entry = {"file": file.name, "sha256": sha256_of(file), "bytes": file.stat().st_size, "dtype": dtype,
             "stage": source.get("stage", "model"), "strategy": source.get("strategy", ""),
             "config": config.to_dict(), "command": command, "wall_seconds": round(float(wall_seconds), 1),
             "wall_seconds_estimated": bool(wall_seconds_estimated),
             "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"}
    manifest = read_manifest(folder)
    manifest[name] = entry
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return entry


def load_pretrained(name: str, folder: str | Path | None = None) -> ShippedCheckpoint:
    """The shipped checkpoint ``name`` (e.g. ``"GD+LR"``), after checking its SHA-256 against the manifest."""
    folder = Path(folder or DEFAULT_FOLDER)
    manifest = read_manifest(folder)
    if name not in manifest:
        shipped = ", ".join(sorted(manifest)) or "none"
        raise CheckpointError(f"no shipped checkpoint named {name!r} in {folder / MANIFEST} (shipped: {shipped})")
    entry = manifest[name]
    path = folder / entry["file"]
    how = f"recreate it with: {entry['command']}"
    if not path.is_file():
        raise CheckpointError(f"{path}: the file of checkpoint {name!r} is missing; restore it with "
                              f"`git checkout -- {path}` or {how}")
    got = sha256_of(path)
    if got != entry["sha256"]:
        raise CheckpointError(f"{path}: SHA-256 {got[:12]}... does not match the manifest ({entry['sha256'][:12]}...): "
                              f"the file is damaged or was replaced. Restore it with `git checkout -- {path}` or {how}")
    return ShippedCheckpoint(name, path, RunConfig.from_dict(entry["config"]), entry)


def init_of(entry: dict[str, Any]) -> str:
    """The initialisation a manifest entry stands for: ``"GD"`` for a global stage, ``"GD+LR"`` for a local one."""
    config = entry["config"]
    global_strategy = config["global_"]["strategy"]
    if entry.get("stage") == "local":
        return f"{global_strategy}+{config['local']['strategy']}"
    return global_strategy


def _pretraining_parts(config: dict[str, Any], init: str) -> dict[str, Any]:
    """The parts of a configuration that decide an initialisation's pre-trained weights (JSON data)."""
    config = RunConfig.from_dict(config).results_dict()
    parts = {key: config[key] for key in ("seed", "data", "model", "global_")}
    global_strategy, _, local_strategy = init.partition("+")
    parts["global_"] = _without_bookkeeping(dict(parts["global_"], strategy=global_strategy))
    if local_strategy:
        parts["local"] = _without_bookkeeping(dict(config["local"], strategy=local_strategy))
    return parts


# How often a stage saves and logs: not part of what it learns.
BOOKKEEPING = ("checkpoint_every", "log_every")


def _without_bookkeeping(stage: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stage.items() if k not in BOOKKEEPING}


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}{'.' if prefix else ''}{key}")
        return out
    return [] if a == b else [f"{prefix}: shipped {a!r}, asked {b!r}"]


def pretraining_differences(a: RunConfig, b: RunConfig, init: str) -> list[str]:
    """The settings that make ``a`` and ``b`` pre-train ``init`` differently ("global_.lr: shipped 0.001, asked
    0.01"; empty when they pre-train it the same way)."""
    return _differences(_pretraining_parts(a.to_dict(), init), _pretraining_parts(b.to_dict(), init))


def shipped_weights(cfg: RunConfig, inits, folder: str | Path | None = None) -> dict[str, Path]:
    """``{init: verified checkpoint}`` for each pre-trained initialisation in ``inits`` ("random" needs none),
    from the shipped checkpoint whose pre-training configuration equals ``cfg``'s (same data, model, global stage
    and, for a local initialisation, local stage). Raises :class:`CheckpointError` naming the settings that differ
    when no shipped checkpoint matches: pre-train instead (``retrain=True`` in the chapters)."""
    manifest = read_manifest(folder)
    found: dict[str, Path] = {}
    for init in inits:
        if init == "random":
            continue
        wanted = _pretraining_parts(cfg.to_dict(), init)
        candidates = [(name, entry) for name, entry in sorted(manifest.items()) if init_of(entry) == init]
        match = next((name for name, entry in candidates
                      if _pretraining_parts(entry["config"], init) == wanted), None)
        if match is None:
            where = Path(folder or DEFAULT_FOLDER) / MANIFEST
            if not candidates:
                raise CheckpointError(f"{where}: no shipped checkpoint for {init!r} (shipped: "
                                      f"{', '.join(sorted(manifest)) or 'none'}); pre-train it instead")
            name, entry = candidates[0]
            diff = pretraining_differences(RunConfig.from_dict(entry["config"]), cfg, init)
            raise CheckpointError(f"{where}: the shipped {init!r} checkpoint(s) were pre-trained with other settings "
                                  f"({'; '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}); pre-train it instead")
        found[init] = load_pretrained(match, folder).path
    return found
