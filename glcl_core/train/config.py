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

    ``path=None`` means the embedded data set, made with the generator preset ``embedded``. The split is fixed by
    ``split_seed``, by subject (``glcl_core.data.split``): ``n_test`` test subjects (never used for any choice),
    ``n_val`` validation subjects (model selection), the rest form the training pool (pre-training images and the
    labelled volumes drawn for fine-tuning). A subject is one volume on the embedded and Decathlon data (the counts
    are volumes) and one patient's ED and ES frames on ACDC (patients).
    """

    path: str | None = None
    embedded: str = "standard"  # preset of the embedded data set (used when path is None): standard, varied
    spacing: float = 2.5  # in-plane mm
    size: int = 96  # in-plane pixels (H = W)
    n_partitions: int = 4
    channel: int = 0  # for multi-channel Decathlon images
    frames: str = "ED,ES"  # ACDC: the cardiac frames loaded, "ED", "ES" or both (GLCL used ED); other layouts: unused
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
    # Views: "glcl" (GLCL's global stage: crop near the centre resized back, brightness, contrast, one draw per
    # view batch), "glcl+geometric" (adds rotation, scaling and flips: not part of GLCL's global stage),
    # "pcl" (PCL's own pre-training augmentation). See glcl_core.augment.GLOBAL_AUGMENTATIONS.
    augmentation: str = "glcl"
    # GD's partners: "all" (paper: same-partition slices of every other volume, both views) or "neighbour" (GLCL's
    # code: the two ring neighbours in batch order, view with view). See glcl_core.contrastive.global_masks.
    gd_pairing: str = "all"
    # Optimiser and LR schedule. Defaults: Adam at a constant lr, no weight decay, no warm-up (GLCL's code:
    # tf.train.AdamOptimizer(1e-3), no schedule). The "pcl" preset: SGD, momentum 0.9, weight decay 1e-5, cosine.
    optimizer: str = "adam"  # "adam" or "sgd"
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    schedule: str = "constant"  # "constant" or "cosine": lr_t = lr * (1 + cos(pi * t / iterations)) / 2 at step t
    warmup: int = 0  # steps of linear warm-up, lr_t *= (t + 1) / warmup for t < warmup (ours; 0 in both codes)
    head_hidden: int | None = None  # g1's hidden width; None: 1024 for "dense" (GLCL), C for "pooled" (PCL)
    head_dim: int = 128  # g1's output width (GLCL 128; PCL 512)
    # None: the plain loss. A number: the loss is multiplied by temperature / base_temperature, as PCL's code does
    # (SupCon's base temperature 0.07 beside tau = 0.1: x 1.43), which under SGD acts as a larger lr.
    base_temperature: float | None = None
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
    # Negatives: None picks "official" for sparse (the official code's hand-picked table: 5 regions x 2 views = 10
    # per L^R anchor; 4 of its positions are extra, negative-only regions), "all" for dense (every other region), or
    # "random" when n_negatives is set. "random": n_negatives per anchor over both views from a fixed draw of
    # regions (10 if n_negatives is None; the earlier default).
    negatives: str | None = None
    n_negatives: int | None = None  # only with negatives="random" (or negatives=None, which then means "random")
    # LD only (sparse form; dense is always "symmetric"): "official" = anchors in view 1, positives = own view 2 and
    # partners' view 1, per-pair negatives from the pair's two maps (the official code); "symmetric" = mask-kernel
    # form, anchors in both views, partners' both views positive, negatives from the anchor's own image.
    ld_pairs: str = "official"
    ld_negative_regions: int = 4  # LD with the official table: first 4 of the 5 listed per map (official); 5 = all
    pooling: str = "flatten"
    head_norm: bool = True  # g2 = conv-BN-ReLU-conv without biases (official); False = conv-ReLU-conv with biases
    # Region projection before the loss: "linear" = one shared bias-free Linear(D_in -> projection_dim) on every
    # pooled region, D_in = C*K*K (flatten) or C (mean) (official, 576 -> 128); "none" = the pooled region itself.
    projection: str = "linear"
    projection_dim: int = 128
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
    # "glcl": GLCL's loss (1 - Dice per image and class, background included, averaged; its code's default);
    # "dice": batch-wide soft Dice over the foreground classes; "dice+ce": "dice" plus cross-entropy. The default
    # "dice+ce" is a deviation from both papers (GLCL: "glcl"; PCL fine-tunes with cross-entropy alone, which is
    # not offered here). See glcl_core.train.finetuning.segmentation_loss.
    loss: str = "dice+ce"
    # True: a frozen-representation probe, not fine-tuning. The encoder (random or pre-trained) and any decoder
    # blocks loaded from a local-stage checkpoint keep their weights and norm statistics; only the rest of the
    # decoder and the segmentation head are trained. It measures what the pre-trained layers hold, apart from how
    # fast fine-tuning optimises them.
    freeze: bool = False
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
#
# The short-budget profiles (ci, cpu) change two settings of GLCL's global stage, both named options: g1 averages
# the bottleneck over space before its MLP (head "pooled"; GLCL flattens it, "dense") and the brightness/contrast
# of a view is drawn per image ("glcl-per-image"; GLCL's code draws once per view batch). Chosen on validation
# slices only (scripts/sweep_pretraining.py, results/pretraining_sweep_cpu.csv): with GLCL's two settings G^R ends
# its 300 cpu steps at 0.68 x chance (top-1 view retrieval 0.20), with both changes at 0.36 x chance (0.52).
# The batch-level draw lets a network tell view batch 1 from view batch 2 by their global intensity, and a dense
# head must learn shift invariance to the crop offsets that average pooling has by construction. The gpu profile
# (paper scale) keeps GLCL's settings.
BUDGET_GLOBAL_STAGE = {"head": "pooled", "augmentation": "glcl-per-image"}

_PROFILE_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "ci": {
        "data": {"spacing": 4.0, "size": 64},
        "model": {"channels": (8, 16, 32, 64, 64)},
        "global_": {"iterations": 4, "batch_size": 8, "n_volumes": 3, "checkpoint_every": 2, "log_every": 1,
                    **BUDGET_GLOBAL_STAGE},
        "local": {"iterations": 4, "batch_size": 4, "n_volumes": 2, "checkpoint_every": 2, "log_every": 1},
        "finetune": {"iterations": 6, "batch_size": 8, "eval_every": 3, "checkpoint_every": 3, "log_every": 1},
    },
    "cpu": {"global_": dict(BUDGET_GLOBAL_STAGE)},  # otherwise the dataclass defaults are the cpu profile
    "gpu": {
        "data": {"spacing": 1.25, "size": 192},
        "model": {"channels": (16, 32, 64, 128, 128, 128)},
        "global_": {"iterations": 10000, "batch_size": 24, "n_volumes": 6, "checkpoint_every": 500, "log_every": 50},
        "local": {"iterations": 10000, "batch_size": 12, "n_volumes": 3, "checkpoint_every": 500, "log_every": 50},
        "finetune": {"iterations": 10000, "batch_size": 20, "eval_every": 250, "checkpoint_every": 500,
                     "log_every": 50},
    },
}


# Presets: another method's own pipeline, applied on top of a profile (see make_config).
# "pcl": PCL's pre-training pipeline beside its loss (Zeng et al. 2021, its code's train_contrast.py and
# run_script.sh): SGD lr 0.1, momentum 0.9, weight decay 1e-5, cosine schedule over the stage (PCL: over 300
# epochs, no warm-up), batch 32 slices x 2 views, projection global average pool -> Linear(C, C) -> ReLU ->
# Linear(C, 512), PCL's augmentation, temperature 0.1 with the loss x 0.1 / 0.07 (its SupCon base temperature).
# The threshold stays the config's (PCL: 0.1 CHD, 0.35 ACDC).
# Not covered: PCL's network (4 pools, channels f..16f, LeakyReLU, no norm in its centre block, He init).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "pcl": {
        "global_": {"strategy": "PCL", "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-5,
                    "schedule": "cosine", "warmup": 0, "head": "pooled", "head_hidden": None, "head_dim": 512,
                    "augmentation": "pcl", "temperature": 0.1, "base_temperature": 0.07, "batch_size": 32},
    },
}
# Pre-training budgets, applied on top of a profile (make_config(budget=...)). "profile": the profile's own
# iterations (cpu: 300 global / 200 local steps, what a chapter trains in minutes). "long": the budget of the shipped
# checkpoints (glcl_core/pretrained), chosen on validation volumes with scripts/pretraining_budget.py
# (results/pretraining_budget_cpu.csv): on the cpu profile 3000 global steps and 2000 local steps (the profile's
# 200/300 ratio); the gpu profile is already at the papers' 10,000; the ci profile stays seconds-long.
BUDGETS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "profile": {"ci": {}, "cpu": {}, "gpu": {}},
    "long": {"ci": {}, "cpu": {"global_": {"iterations": 3000}, "local": {"iterations": 2000}}, "gpu": {}},
}

# Profile sizes a preset leaves alone: the ci profile stays seconds-long (its batch and iterations).
_PRESET_KEEPS: dict[str, dict[str, tuple[str, ...]]] = {
    "ci": {"global_": ("batch_size", "iterations", "n_volumes")},
}


def make_config(profile: str | None = None, seed: int = 0, preset: str | None = None, budget: str = "profile",
                **overrides: Any) -> RunConfig:
    """The configuration of a profile, with optional preset, pre-training budget and overrides.

    Order: the profile's table (sizes), then the pre-training budget (:data:`BUDGETS`: ``"profile"`` or ``"long"``,
    the shipped checkpoints' budget), then the preset (:data:`PRESETS`, another method's pipeline), then the
    overrides, so an override always wins. Under the ci profile a preset does not change the sizes listed in
    ``_PRESET_KEEPS`` (batch size, iterations), so ci runs stay seconds-long; on the cpu and gpu profiles the
    preset's batch size applies.

    Overrides are given per part, e.g. ``make_config("ci", global_={"strategy": "PCL"}, data={"path": "/data"})``;
    ``make_config("gpu", preset="pcl")`` is PCL's pipeline at paper scale.
    """
    profile = check_profile(profile) if profile else default_profile()
    cfg = RunConfig(profile=profile, seed=seed)
    for part, values in _PROFILE_OVERRIDES[profile].items():
        _update(cfg, part, values)
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    for part, values in BUDGETS[budget][profile].items():
        _update(cfg, part, values)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        keeps = _PRESET_KEEPS.get(profile, {})
        for part, values in PRESETS[preset].items():
            _update(cfg, part, {k: v for k, v in values.items() if k not in keeps.get(part, ())})
    for part, values in overrides.items():
        if not isinstance(values, dict):
            raise TypeError(f"override for {part!r} must be a dict of fields, got {type(values).__name__}")
        _update(cfg, part, values)
    if cfg.data.path is not None and "n_classes" not in overrides.get("model", {}):
        _classes_from_data(cfg)
    return cfg


def _classes_from_data(cfg: RunConfig) -> None:
    """A user's data set decides the number of classes (dataset.json labels, else the largest label + 1), unless
    ``model.n_classes`` is given. Unreadable data keep the default here: loading it reports the file."""
    from glcl_core.data import DataError
    from glcl_core.data.io import count_classes

    try:
        n_classes = count_classes(cfg.data.path, frames=cfg.data.frames.split(","))
    except (DataError, OSError):
        return
    if n_classes is not None:
        cfg.model.n_classes = max(2, n_classes)


def _update(cfg: RunConfig, part: str, values: dict[str, Any]) -> None:
    if not hasattr(cfg, part) or not dataclasses.is_dataclass(getattr(cfg, part)):
        raise ValueError(f"unknown config part {part!r}")
    sub = getattr(cfg, part)
    names = {f.name for f in dataclasses.fields(sub)}
    for key, value in values.items():
        if key not in names:
            raise ValueError(f"unknown field {part}.{key}; valid: {', '.join(sorted(names))}")
        setattr(sub, key, tuple(value) if key == "channels" else value)
