"""Partial weight loading (:func:`load_pretrained`: copy named parts of a model, e.g. the encoder, from a state
dict, saying what was loaded and what was left fresh) and parameter counting.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
from torch import nn


# ------------------------------------------------------------------------ partial loading
@dataclass
class LoadSummary:
    """What :func:`load_pretrained` copied. Prefixes are module units such as ``encoder.levels.0``, ``decoder.2``."""

    loaded_prefixes: list[str] = field(default_factory=list)
    missing_prefixes: list[str] = field(default_factory=list)
    loaded_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        loaded = ", ".join(self.loaded_prefixes) or "nothing"
        missing = ", ".join(self.missing_prefixes) or "none"
        return f"loaded {len(self.loaded_keys)} tensors ({loaded}); left fresh: {missing}"


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / torch.compile wrappers


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _WRAPPER_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _unit(key: str, part: str) -> str:
    """Group a key into its module unit: everything up to the first numeric component (``decoder.2``)."""
    pieces = key.split(".")
    for i, piece in enumerate(pieces[:-1]):
        if piece.isdigit():
            return ".".join(pieces[: i + 1])
    return part


def load_pretrained(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], parts: Iterable[str] = ("encoder",)
) -> LoadSummary:
    """Copy the weights (and norm buffers) of the named top-level parts of ``model`` from ``state_dict``.

    Everything else (e.g. the segmentation head) keeps its current values. Within a part, whole units may be
    absent (a local pre-training checkpoint holds only the first ``l`` decoder blocks): those stay fresh and are
    listed in ``missing_prefixes``. Raises ``ValueError`` for an unknown part, a part with no weights at all in
    ``state_dict``, a unit that is only partly present, keys the model lacks, or a shape mismatch (naming the
    parameter). ``module.`` / ``_orig_mod.`` prefixes (DDP, torch.compile) are ignored.
    """
    parts = (parts,) if isinstance(parts, str) else tuple(parts)
    children = dict(model.named_children())
    for part in parts:
        if part not in children:
            raise ValueError(f"unknown part {part!r}; the model has {', '.join(children)}")
    source = {_strip_wrappers(k): v for k, v in state_dict.items()}
    target = model.state_dict()
    summary = LoadSummary()
    selected: dict[str, torch.Tensor] = {}
    for part in parts:
        prefix = part + "."
        model_keys = [k for k in target if k.startswith(prefix)]
        source_keys = [k for k in source if k.startswith(prefix)]
        if not source_keys:
            raise ValueError(f"state dict has no weights for {part!r} (no keys starting with {prefix!r})")
        unexpected = sorted(set(source_keys) - set(model_keys))
        if unexpected:
            raise ValueError(
                f"state dict has {len(unexpected)} {part!r} tensors this model lacks, e.g. {unexpected[0]!r} "
                f"(different depth or architecture?)"
            )
        for k in source_keys:
            if tuple(source[k].shape) != tuple(target[k].shape):
                raise ValueError(
                    f"shape mismatch for {k!r}: checkpoint {tuple(source[k].shape)} vs model {tuple(target[k].shape)}"
                )
        units: dict[str, list[str]] = {}
        for k in model_keys:
            units.setdefault(_unit(k, part), []).append(k)
        for unit, keys in units.items():
            present = [k for k in keys if k in source]
            if present and len(present) != len(keys):
                absent = [k for k in keys if k not in source]
                raise ValueError(f"checkpoint holds only part of {unit!r}: {absent[0]!r} is missing")
            if present:
                summary.loaded_prefixes.append(unit)
                summary.loaded_keys.extend(keys)
                selected.update({k: source[k] for k in keys})
            else:
                summary.missing_prefixes.append(unit)
                summary.missing_keys.extend(keys)
    # load_state_dict copies in place, converting device and dtype; strict=False because we load a subset.
    result = model.load_state_dict(selected, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    return summary


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
