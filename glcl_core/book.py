"""What every chapter of the book does in its set-up cell, in one place.

A chapter's ``parameters`` cell holds ``profile`` and ``seed`` (papermill overrides them); the next cell calls
:func:`chapter_setup`, which resolves the profile, the device and the run configuration and prints them.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from glcl_core.device import default_device
from glcl_core.profiles import check_profile, default_profile
from glcl_core.train.config import RunConfig, make_config


@dataclass
class ChapterRun:
    profile: str
    seed: int
    device: torch.device
    cfg: RunConfig
    data_spec: str | dict | None = None

    def pick(self, ci, cpu, gpu):
        """The value for this profile, e.g. ``run.pick(ci=2_000, cpu=20_000, gpu=200_000)`` points to embed."""
        return {"ci": ci, "cpu": cpu, "gpu": gpu}[self.profile]

    def data(self, default: str = "standard") -> dict:
        """The ``data`` settings for :func:`make_config`: the chapter's parameter ``data`` (see
        :func:`data_settings`), or the embedded preset ``default`` the chapter was written for."""
        return data_settings(self.data_spec, default)

    def __repr__(self) -> str:
        return f"ChapterRun(profile={self.profile!r}, seed={self.seed}, device={self.device})"


def data_settings(spec: str | dict | None, default: str = "standard") -> dict:
    """What a chapter's ``data`` parameter names, as the ``data`` part of a configuration:

    * ``None``: the embedded data set with the chapter's own preset ``default``;
    * an embedded preset (``"standard"``, ``"varied"``, ``"multicontrast"``);
    * a public data set of :data:`glcl_core.data.datasets.DATASETS` (e.g. ``"Task05_Prostate"``): downloaded once into
      the data cache (checksum verified) and read from there;
    * a folder (Decathlon task, ACDC or plain NIfTI pairs), read and never written;
    * a dict of data settings, passed through (e.g. ``{"path": "...", "channel": 1}``).
    Raises :class:`glcl_core.data.DataError` naming the value when it is none of these."""
    from glcl_core.data import DataError
    from glcl_core.data.datasets import DATASETS, is_known
    from glcl_core.data.fetching import fetch
    from glcl_core.data.presets import PRESETS

    if spec is None:
        return {"embedded": default}
    if isinstance(spec, dict):
        return dict(spec)
    text = str(spec).strip()
    if text in PRESETS:
        return {"embedded": text}
    if is_known(text):
        return {"path": str(fetch(text))}
    folder = Path(text).expanduser()
    if folder.is_dir():
        return {"path": str(folder.resolve())}
    raise DataError(f"data={spec!r}: not an embedded preset ({', '.join(PRESETS)}), a data set to fetch "
                    f"({', '.join(DATASETS)}) or an existing folder")


def chapter_setup(profile: str | None = None, seed: int = 0, data: str | dict | None = None,
                  quiet: bool = False) -> ChapterRun:
    """Resolve the profile (``None``: ``GLCL_PROFILE``, else ``cpu``), seed the random generators, pick the device
    and build the profile's configuration. ``data``: the chapter's data (:func:`data_settings`); ``run.cfg`` uses
    it with the standard embedded preset as the default, and ``run.data(preset)`` gives it with another default."""
    profile = check_profile(profile) if profile else default_profile()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path.home() / ".cache" / "glcl_core" / "numba"))
    _matplotlib_defaults()
    run = ChapterRun(profile=profile, seed=seed, device=default_device(),
                     cfg=make_config(profile, seed=seed, data=data_settings(data)), data_spec=data)
    if not quiet:
        where = "" if data is None else f" | data {run.cfg.data.path or run.cfg.data.embedded}"
        print(f"profile {profile} | device {run.device} | torch {torch.__version__} | seed {seed}{where}")
    return run


def _matplotlib_defaults() -> None:
    import matplotlib as mpl

    try:  # in a kernel, figures must render inline whatever MPLBACKEND says (papermill, nbval, Colab)
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            shell.run_line_magic("matplotlib", "inline")
    except ImportError:
        pass

    mpl.rcParams.update({
        "figure.dpi": 80,  # small PNGs keep the committed notebooks light
        "savefig.dpi": 80,
        "figure.max_open_warning": 0,
        "axes.titlesize": "medium",
        "image.interpolation": "nearest",
    })


def pretrained_weights(cfg: RunConfig, inits, out: str | Path, retrain: bool = False, folder: str | Path | None = None,
                       log=print) -> dict[str, Path]:
    """``{init: checkpoint}`` for the pre-trained initialisations in ``inits`` ("random" needs none).

    ``retrain=False``: the shipped checkpoints whose pre-training configuration equals ``cfg``'s
    (:func:`glcl_core.checkpoints.shipped_weights`, hashes checked), e.g. ``make_config("cpu", budget="long",
    data={"embedded": checkpoints.SHIPPED_EMBEDDED})``. When none matches (another profile, data set or setting),
    it says why and pre-trains instead. ``retrain=True``: pre-train under ``out/pretrain`` (resumes; a finished
    stage is reused), as :func:`glcl_core.experiment.run_experiment` does.
    """
    from glcl_core import checkpoints
    from glcl_core.experiment import open_grid_dir, prepare_split, pretrain

    wanted = [i for i in inits if i != "random"]
    if not retrain:
        try:
            found = checkpoints.shipped_weights(cfg, wanted, folder)
            log(f"shipped checkpoints: {', '.join(wanted) or 'none needed'} (SHA-256 checked)")
            return found
        except checkpoints.CheckpointError as err:
            log(f"no matching shipped checkpoint, pre-training instead: {err}")
    split = prepare_split(cfg)
    # ``out`` is the chapter's grid folder: claim it as one (marker, lock) before pre-training into out/pretrain,
    # so that run_experiment(cfg, out, ...) afterwards finds its own folder
    lock = open_grid_dir(Path(out))
    try:
        return {init: pretrain(init, cfg, split.pool, Path(out), progress=False, val=split.val).checkpoint
                for init in wanted}
    finally:
        lock.release()
