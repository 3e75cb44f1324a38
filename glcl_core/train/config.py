"""Stage configurations as dataclasses, with the three profiles in one table.

A config is saved as ``config.json`` beside every run, so a run can be repeated exactly:
``StageConfig.from_json(path)`` rebuilds it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glcl_core.profiles import check_profile, default_profile

GLOBAL_STRATEGIES = ("GR", "GD-", "GD", "PCL")
LOCAL_STRATEGIES = ("LR", "LD")


@dataclass
class DataConfig:
    """Which volumes, at what resolution, and how they are split.

    ``path=None`` means the embedded data set, made with the generator preset ``embedded``. The split is fixed by ``split_seed``: ``n_test`` test volumes
    (never used for any choice), ``n_val`` validation volumes (model selection), the rest form the training pool
    (pre-training images and the labelled volumes drawn for fine-tuning).
    """

    path: str | None = None
    embedded: str = "standard"  # preset of the embedded data set (used when path is None): standard, varied
    spacing: float = 2.5  # in-plane mm
    size: int = 96  # in-plane pixels (H = W)
    n_partitions: int = 4
    channel: int = 0  # for multi-channel Decathlon images
    n_test: int = 6
    n_val: int = 2
    split_seed: int = 0


@dataclass
class ModelConfig:
    channels: tuple[int, ...] = (16, 32, 64, 128, 128)
    n_classes: int = 4  # set from the data when it has more classes


@dataclass
class GlobalConfig:
    """Stage 1: encoder + g1 with a global contrastive loss."""

    strategy: str = "GD"
    iterations: int = 300
    batch_size: int = 24  # slices per batch for GR and PCL (x2 views)
    n_volumes: int = 6  # m for GD-, GD (batch = m x S slices, x2 views)
    lr: float = 1e-3
    temperature: float = 0.1
    threshold: float = 0.1  # PCL position threshold
    head: str = "dense"  # g1: "dense" (paper) or "pooled"
    checkpoint_every: int = 100
    log_every: int = 10


@dataclass
class LocalConfig:
    """Stage 2: first ``decoder_blocks`` decoder blocks + g2 with a local loss, encoder frozen."""

    strategy: str = "LR"
    iterations: int = 200
    batch_size: int = 12  # slices for LR (x2 views)
    n_volumes: int = 3  # m for LD (batch = m x S slices)
    decoder_blocks: int = 3
    form: str = "sparse"  # "sparse" (13 regions, paper) or "dense"
    region_size: int = 3
    n_negatives: int | None = None  # None: 10 for sparse (5 other regions x 2 views, as the official code), all others for dense
    pooling: str = "flatten"
    lr: float = 1e-3
    temperature: float = 0.1
    checkpoint_every: int = 100
    log_every: int = 10


@dataclass
class FinetuneConfig:
    n_labelled: int = 2
    iterations: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    loss: str = "dice+ce"  # "dice" (GLCL) or "dice+ce"
    eval_every: int = 50
    checkpoint_every: int = 100
    log_every: int = 10


@dataclass
class SpeedConfig:
    """How fast, not what: GPU speed options that leave the computation unchanged (up to rounding).

    ``channels_last``: NHWC memory layout for the network and its inputs (faster convolutions on tensor cores).
    ``compile``: ``torch.compile`` the trained modules (slow first steps, faster afterwards; needs a C++ compiler,
    and Triton on GPU). Mixed precision (bf16/fp16) follows the device, see :mod:`glcl_core.device`.
    """

    channels_last: bool = False
    compile: bool = False


# Parts that change speed but not results: ignored when a run is resumed or a grid re-opened with other values.
RUNTIME_PARTS = ("speed",)


@dataclass
class RunConfig:
    """Everything a run needs. ``stage`` says which part is used; the rest is kept for the record."""

    profile: str = "cpu"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    global_: GlobalConfig = field(default_factory=GlobalConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        parts = {
            "data": DataConfig,
            "model": ModelConfig,
            "global_": GlobalConfig,
            "local": LocalConfig,
            "finetune": FinetuneConfig,
            "speed": SpeedConfig,  # absent from configs written before it existed: defaults
        }
        kwargs: dict[str, Any] = {k: v for k, v in d.items() if k not in parts}
        for key, klass in parts.items():
            sub = dict(d.get(key, {}))
            if key == "model" and "channels" in sub:
                sub["channels"] = tuple(sub["channels"])
            kwargs[key] = klass(**sub)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> "RunConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def results_dict(self) -> dict[str, Any]:
        """The parts that decide the results (everything but the speed settings), as JSON data."""
        return {k: v for k, v in json.loads(json.dumps(self.to_dict())).items() if k not in RUNTIME_PARTS}

    def digest(self) -> str:
        """8 hex digits naming the results-relevant configuration, e.g. for a run folder that must not mix
        results of different configurations."""
        text = json.dumps(self.results_dict(), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:8]


# The one table of profile settings. ci: seconds on 2 CPU cores. cpu: minutes on 2 CPU cores.
# gpu: the papers' scale (192x192, 6-level U-Net, 10k iterations, paper batch sizes).
_PROFILE_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "ci": {
        "data": {"spacing": 4.0, "size": 64},
        "model": {"channels": (8, 16, 32, 64, 64)},
        "global_": {"iterations": 4, "batch_size": 8, "n_volumes": 3, "checkpoint_every": 2, "log_every": 1},
        "local": {"iterations": 4, "batch_size": 4, "n_volumes": 2, "checkpoint_every": 2, "log_every": 1},
        "finetune": {"iterations": 6, "batch_size": 8, "eval_every": 3, "checkpoint_every": 3, "log_every": 1},
    },
    "cpu": {},  # the dataclass defaults are the cpu profile
    "gpu": {
        "data": {"spacing": 1.25, "size": 192},
        "model": {"channels": (16, 32, 64, 128, 128, 128)},
        "global_": {"iterations": 10000, "batch_size": 24, "n_volumes": 6, "checkpoint_every": 500, "log_every": 50},
        "local": {"iterations": 10000, "batch_size": 12, "n_volumes": 3, "checkpoint_every": 500, "log_every": 50},
        "finetune": {"iterations": 10000, "batch_size": 20, "eval_every": 250, "checkpoint_every": 500,
                     "log_every": 50},
    },
}


def make_config(profile: str | None = None, seed: int = 0, **overrides: Any) -> RunConfig:
    """The configuration of a profile, with optional overrides.

    Overrides are given per part, e.g. ``make_config("ci", global_={"strategy": "PCL"}, data={"path": "/data"})``.
    """
    profile = check_profile(profile) if profile else default_profile()
    cfg = RunConfig(profile=profile, seed=seed)
    for part, values in _PROFILE_OVERRIDES[profile].items():
        _update(cfg, part, values)
    for part, values in overrides.items():
        if not isinstance(values, dict):
            raise TypeError(f"override for {part!r} must be a dict of fields, got {type(values).__name__}")
        _update(cfg, part, values)
    return cfg


def _update(cfg: RunConfig, part: str, values: dict[str, Any]) -> None:
    if not hasattr(cfg, part) or not dataclasses.is_dataclass(getattr(cfg, part)):
        raise ValueError(f"unknown config part {part!r}")
    sub = getattr(cfg, part)
    names = {f.name for f in dataclasses.fields(sub)}
    for key, value in values.items():
        if key not in names:
            raise ValueError(f"unknown field {part}.{key}; valid: {', '.join(sorted(names))}")
        setattr(sub, key, tuple(value) if key == "channels" else value)
