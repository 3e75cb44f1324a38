"""The low-label grid: initialisations x labelled-volume counts x seeds, appended cell by cell to a tidy CSV.

Pre-training does not look at labels, so each initialisation is pre-trained once (on the training pool) and shared
by every fine-tuning cell. A re-run skips finished cells and resumes unfinished runs from their checkpoints.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from glcl_core import distributed
from glcl_core.data import load_volumes
from glcl_core.data.split import Split, draw_labelled, split_volumes
from glcl_core.data.volume import Volume
from glcl_core.provenance import warn_if_other_source
from glcl_core.train.config import RunConfig

# name -> (global strategy or None, local strategy or None). "PCL+LR" is a combination neither paper ran.
INITIALISATIONS: dict[str, tuple[str | None, str | None]] = {
    "random": (None, None),
    "GR": ("GR", None),
    "GD-": ("GD-", None),
    "GD": ("GD", None),
    "PCL": ("PCL", None),
    "GD+LR": ("GD", "LR"),
    "GD+LD": ("GD", "LD"),
    "PCL+LR": ("PCL", "LR"),
}
CSV_COLUMNS = ["method", "strategy", "n_labelled", "seed", "volume", "class", "dice"]


def method_of(init: str) -> str:
    global_strategy, local_strategy = INITIALISATIONS[init]
    if global_strategy is None:
        return "random"
    return "global+local" if local_strategy else "global"


def load_data(cfg: RunConfig) -> list[Volume]:
    """The run's volumes: ``cfg.data.path``, or the embedded data set when it is None."""
    if cfg.data.path is None:
        from glcl_core.data import embedded_dataset

        path = embedded_dataset(params=cfg.data.embedded)
    else:
        path = Path(cfg.data.path)
    return load_volumes(path, spacing=cfg.data.spacing, size=cfg.data.size, channel=cfg.data.channel,
                        n_partitions=cfg.data.n_partitions, frames=cfg.data.frames.split(","))


def prepare_split(cfg: RunConfig, volumes: list[Volume] | None = None) -> Split:
    volumes = volumes if volumes is not None else load_data(cfg)
    return split_volumes(volumes, n_test=cfg.data.n_test, n_val=cfg.data.n_val, seed=cfg.data.split_seed)


def _dataset_json(cfg: RunConfig) -> dict | None:
    """The data's dataset.json (the embedded data set's when ``cfg.data.path`` is None), or None without one."""
    from glcl_core.data import embedded_dataset

    root = Path(cfg.data.path) if cfg.data.path else embedded_dataset(params=cfg.data.embedded)
    meta = root / "dataset.json"
    return json.loads(meta.read_text()) if meta.is_file() else None


def class_names_of(cfg: RunConfig) -> list[str] | None:
    """Class names from the data's dataset.json, when it has one."""
    meta = _dataset_json(cfg)
    if meta is None:
        return None
    from glcl_core.data.decathlon import label_names

    labels = label_names(meta)  # {value: name}, MSD ({"0": "background"}) or nnU-Net v2 ({"background": 0}) style
    return [labels.get(k, str(k)) for k in range(cfg.model.n_classes)] if labels else None


def subject_metadata(cfg: RunConfig) -> dict[str, dict]:
    """What the embedded data's generator drew for each subject (``{"icbm_001": {"contrast_family": "t2", ...}}``),
    from its dataset.json; ``{}`` for data without that record (e.g. a user's own folder)."""
    meta = _dataset_json(cfg) or {}
    subjects = meta.get("generator", {}).get("subjects", {}) if isinstance(meta.get("generator"), dict) else {}
    return dict(subjects) if isinstance(subjects, dict) else {}


@dataclass
class Pretrained:
    name: str
    checkpoint: Path | None  # None for random initialisation


def pretrain(init: str, cfg: RunConfig, pool: list[Volume], out: Path, progress: bool | None = None,
             val: list[Volume] | None = None) -> Pretrained:
    """Pre-train (or reuse) the weights for one initialisation under ``out/pretrain/``; ``val``: the volumes the
    stages' health monitor reads (never trained on)."""
    from glcl_core.train.pretrain import pretrain_global, pretrain_local

    if init not in INITIALISATIONS:
        raise ValueError(f"unknown initialisation {init!r}; choose from {', '.join(INITIALISATIONS)}")
    global_strategy, local_strategy = INITIALISATIONS[init]
    if global_strategy is None:
        return Pretrained(init, None)
    global_dir = out / "pretrain" / global_strategy
    if _exists_on_main(global_dir / "final.pt"):
        distributed.run_on_main(lambda: warn_if_other_source(global_dir, "its finished weights"))
    else:
        gcfg = RunConfig.from_dict(cfg.to_dict())
        gcfg.global_.strategy = global_strategy
        pretrain_global(gcfg, pool, out=global_dir, resume=True, progress=progress, val=val)
    if local_strategy is None:
        return Pretrained(init, global_dir / "final.pt")
    local_dir = out / "pretrain" / init
    if _exists_on_main(local_dir / "final.pt"):
        distributed.run_on_main(lambda: warn_if_other_source(local_dir, "its finished weights"))
    else:
        lcfg = RunConfig.from_dict(cfg.to_dict())
        lcfg.global_.strategy = global_strategy
        lcfg.local.strategy = local_strategy
        pretrain_local(lcfg, pool, init=global_dir / "final.pt", out=local_dir, resume=True, progress=progress,
                       val=val)
    return Pretrained(init, local_dir / "final.pt")


def _exists_on_main(path: Path) -> bool:
    """Whether rank 0 sees ``path`` (every rank takes the same branch under torchrun)."""
    return distributed.broadcast_object(path.exists() if distributed.is_main() else None)


def finished_cells(csv_path: Path) -> set[tuple[str, int, int]]:
    """(strategy, n_labelled, seed) of cells already in the CSV."""
    if not csv_path.exists():
        return set()
    with open(csv_path, newline="") as fh:
        return {(r["strategy"], int(r["n_labelled"]), int(r["seed"])) for r in csv.DictReader(fh)}


def append_rows(csv_path: Path, rows: list[dict]) -> None:
    """Append one finished cell in a single write, flushed to disk, so a crash never leaves half a cell."""
    new = not csv_path.exists()
    lines = []
    if new:
        lines.append(",".join(CSV_COLUMNS))
    for r in rows:
        lines.append(",".join(_csv_field(r[c]) for c in CSV_COLUMNS))
    with open(csv_path, "a", newline="") as fh:
        fh.write("\n".join(lines) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _csv_field(value) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    text = str(value)
    return f'"{text}"' if ("," in text or '"' in text) else text


def run_experiment(
    cfg: RunConfig,
    out: str | Path,
    inits: Iterable[str] = tuple(INITIALISATIONS),
    n_labelled: Iterable[int] = (1, 2, 4),
    seeds: Iterable[int] = (0, 1, 2),
    progress: bool | None = None,
    log=print,
    pretrained: Mapping[str, str | Path] | None = None,
    keep_weights: bool = True,
    shared: bool = False,
):
    """Run the grid; returns the whole CSV as a table. Finished cells are skipped on a re-run.

    ``pretrained``: ``{init: checkpoint}`` used instead of pre-training those initialisations, e.g. the shipped
    checkpoints (``glcl_core.checkpoints.shipped_weights(cfg, inits)``); the others are pre-trained under ``out``.
    With ``cfg.finetune.freeze`` the grid is the frozen-representation probe instead of fine-tuning.
    ``keep_weights=False`` deletes each cell's fine-tuned weights once it is scored, leaving only small text files
    (``results.csv``, ``experiment.json``, each cell's ``config.json`` and ``history.csv``): a grid folder that can be
    committed and resumed in another checkout.

    The grid folder is locked while the grid runs: a second run on the same folder is refused with
    :class:`~glcl_core.train.lock.RunLockedError` instead of recording cells twice.

    ``shared=True`` lets several processes (one per core or per GPU) work through one grid together, each started
    with the same call: the grid folder is locked only while a process records the grid or a finished cell, each
    process claims a cell (``out/.claims``) from before it starts until it is recorded and skips the cells another
    one has claimed or recorded, so a cell runs and is recorded once. Every process on the folder must pass ``shared=True`` (a run without it holds the folder from
    start to end). Not under torchrun. The table returned holds the cells recorded so far.
    """
    inits, n_labelled, seeds = list(inits), list(n_labelled), list(seeds)
    for init in inits:
        if init not in INITIALISATIONS:
            raise ValueError(f"unknown initialisation {init!r}; choose from {', '.join(INITIALISATIONS)}")
    out = Path(out)
    if shared:
        if distributed.world_size() > 1:
            raise ValueError("shared=True runs one process per worker; it does not combine with torchrun")
        return _run_grid(cfg, out, inits, n_labelled, seeds, progress, log, pretrained, keep_weights, shared=True)
    # one process per grid folder: rank 0 locks it for the whole grid (finished cells are read under the lock, so
    # two runs on one folder never record a cell twice: the second one is refused with RunLockedError)
    lock = distributed.run_on_main(lambda: open_grid_dir(out))
    try:
        return _run_grid(cfg, out, inits, n_labelled, seeds, progress, log, pretrained, keep_weights)
    finally:
        if lock is not None:
            lock.release()


def open_grid_dir(out: Path):
    """Lock a grid folder (:class:`~glcl_core.train.lock.FolderLock`, returned held) and mark it as an experiment's.

    A folder that is not empty and holds neither the marker nor an ``experiment.json`` (a grid made before the
    marker existed) is refused before anything is written there, as is a stage's run folder."""
    from glcl_core.train.run_folder import (
        NotARunFolderError, folder_kind, read_marker, remove_temporary_files, write_marker,
    )
    from glcl_core.train.lock import FolderLock

    kind = folder_kind(out)
    marker = read_marker(out) if kind == "marked" else None
    if kind == "file":
        raise NotARunFolderError(f"{out} is a file, not a grid folder; choose another --out")
    if kind == "legacy" or (marker is not None and marker.get("stage") != "experiment"):
        raise NotARunFolderError(f"{out} is a training run folder, not an experiment's grid folder; "
                                 "choose another --out")
    if kind == "foreign" and not (out / "experiment.json").is_file():
        raise NotARunFolderError(f"{out} is not empty and is not a glcl_core grid folder (no .glcl_run.json or "
                                 "experiment.json): nothing was written there; choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out, what="experiment folder").acquire()
    try:
        remove_temporary_files(out)
        if marker is None and not (out / "experiment.json").is_file():  # a new grid (an older one is left as is)
            write_marker(out, "experiment")
    except BaseException:
        lock.release()
        raise
    return lock


def _claim_cell(out: Path, init: str, n: int, seed: int):
    """The lock of one cell of a shared grid (held), or None when another worker holds it."""
    from glcl_core.train.lock import FolderLock, RunLockedError

    folder = out / ".claims" / f"{init}_n{n}_s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return FolderLock(folder, what="grid cell").acquire()
    except RunLockedError:
        return None


GRID_WAIT_SECONDS = 120.0  # how long a shared worker waits for the grid folder's lock (held for seconds at a time)


@contextlib.contextmanager
def _grid_locked(out: Path, wait: float | None = None):
    """Hold the grid folder's lock for a short while (a shared grid), waiting while another worker holds it."""
    from glcl_core.train.lock import RunLockedError

    deadline = time.monotonic() + (GRID_WAIT_SECONDS if wait is None else wait)
    while True:
        try:
            lock = open_grid_dir(out)
            break
        except RunLockedError as err:
            if time.monotonic() >= deadline:
                raise RunLockedError(f"{out}: the grid folder stayed locked for {GRID_WAIT_SECONDS:.0f} s; a run "
                                     f"without --shared holds it until it ends ({err})", err.path, err.pid,
                                     err.host) from None
            time.sleep(0.2)
    try:
        yield
    finally:
        lock.release()


def _run_grid(cfg: RunConfig, out: Path, inits: list[str], n_labelled: list[int], seeds: list[int],
              progress: bool | None, log, pretrained: Mapping[str, str | Path] | None, keep_weights: bool,
              shared: bool = False):
    """The body of :func:`run_experiment`: with the grid folder locked, or (``shared``) locking it only to record
    the grid and each finished cell."""
    import pandas as pd

    from glcl_core.train.evaluation import evaluate
    from glcl_core.train.finetuning import finetune
    from glcl_core.train.lock import RunLockedError

    # shared: the folder's lock for each read-and-write of the grid's files; otherwise the caller holds it already
    locked = (lambda: _grid_locked(out)) if shared else contextlib.nullcontext

    # under torchrun rank 0 owns the folder and the CSV; the other ranks train in lockstep and write nothing
    main = distributed.is_main()
    # the grid's Dice resolution (validation and test) is fixed when the grid is created: see _record_grid
    pretrained = {init: Path(path) for init, path in (pretrained or {}).items()}
    csv_path = out / "results.csv"
    with locked():
        resolution = distributed.broadcast_object(
            distributed.run_on_main(lambda: _record_grid(out, cfg, inits, n_labelled, seeds, pretrained)))
        done = distributed.broadcast_object(finished_cells(csv_path) if main else None)
    if main and done:  # each cell's folder records the code that made it
        warn_if_other_source(out, "its finished cells",
                             parts=[out / "finetune" / init / f"n{n}_s{seed}" for init, n, seed in sorted(done)])
    with distributed.main_first():
        split = prepare_split(cfg)
    names = class_names_of(cfg)
    log = log if main else (lambda *_: None)
    log(f"experiment: {split}; {len(inits)} initialisations x {n_labelled} labelled x seeds {seeds}; "
        f"Dice at {resolution} resolution; {len(done)} cells already done -> {csv_path}")
    for init in inits:
        todo = [(n, s) for n in n_labelled for s in seeds if (init, n, s) not in done]
        if not todo:
            continue
        t0 = time.perf_counter()
        if init in pretrained:
            weights = Pretrained(init, pretrained[init])
        else:
            try:
                weights = pretrain(init, cfg, split.pool, out, progress=progress, val=split.val)
            except RunLockedError:
                if not shared:
                    raise
                log(f"  {init}: another worker is pre-training it; its cells are left to that worker")
                continue
        log(f"  {init}: pre-training ready ({time.perf_counter() - t0:.1f} s)")
        for n, seed in todo:
            with contextlib.ExitStack() as cell:
                t0 = time.perf_counter()
                if shared:
                    # the cell's claim, held from the check below to its record: no other worker starts the cell
                    # until it is recorded (or this worker stops: a claim of a process that no longer runs is stale)
                    claim = _claim_cell(out, init, n, seed)
                    if claim is None:
                        log(f"  {init} n={n} seed={seed}: another worker is running it")
                        continue
                    cell.callback(claim.release)
                    with locked():
                        if (init, n, seed) in finished_cells(csv_path):
                            continue  # recorded by another worker meanwhile
                fcfg = RunConfig.from_dict(cfg.to_dict())
                fcfg.seed = seed
                fcfg.finetune.n_labelled = n
                labelled = draw_labelled(split.pool, n, seed)
                run_dir = out / "finetune" / init / f"n{n}_s{seed}"
                try:
                    result = finetune(fcfg, labelled, split.val, init=weights.checkpoint, out=run_dir, resume=True,
                                      progress=progress, val_resolution=resolution)
                except RunLockedError:
                    if not shared:
                        raise
                    log(f"  {init} n={n} seed={seed}: another worker is running it")
                    continue
                if not main:  # every rank holds the same weights: rank 0 tests and records
                    continue
                scores = evaluate(result.model, split.test, n_classes=cfg.model.n_classes, class_names=names,
                                  resolution=resolution)
                rows = [{"method": method_of(init), "strategy": init, "n_labelled": n, "seed": seed,
                         "volume": r["volume"], "class": r["class"], "dice": r["dice"]}
                        for r in scores.to_dict("records")]
                with locked():
                    # a worker of an older glcl_core (no claims) may have run the cell too: record it once
                    if shared and (init, n, seed) in finished_cells(csv_path):
                        continue
                    append_rows(csv_path, rows)
                (run_dir / "last.pt").unlink(missing_ok=True)  # the cell is recorded; keep only final.pt
                if not keep_weights:
                    (run_dir / "final.pt").unlink(missing_ok=True)
                log(f"  {init} n={n} seed={seed}: mean test Dice {scores['dice'].mean():.3f} "
                    f"(val {result.extra['best_val_dice']:.3f} at step {result.extra['best_step']}, "
                    f"{time.perf_counter() - t0:.1f} s)")
    distributed.barrier()
    with locked():
        return pd.read_csv(csv_path) if csv_path.exists() else pd.DataFrame(columns=CSV_COLUMNS)


def _record_grid(out: Path, cfg: RunConfig, inits: list[str], n_labelled: list[int], seeds: list[int],
                 pretrained: Mapping[str, Path] | None = None) -> str:
    """Keep the grid's configuration beside its results; refuse to mix results of different configurations (speed
    settings may differ) or of different given pre-trained weights (recorded by SHA-256). Returns the grid's Dice
    resolution (``evaluate``'s ``resolution``): ``"native"`` for a new grid; a grid whose ``experiment.json`` predates
    the ``dice_resolution`` entry was scored on the preprocessed grid and keeps ``"resampled"``, so one CSV never
    mixes the two."""
    from glcl_core.checkpoints import sha256_of
    from glcl_core.train.checkpoint import atomic_write_text

    given = {init: sha256_of(path) for init, path in sorted((pretrained or {}).items())}
    spec = {"config": json.loads(json.dumps(cfg.to_dict())), "inits": inits, "n_labelled": n_labelled, "seeds": seeds,
            "dice_resolution": "native", "pretrained_sha256": given}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "experiment.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if _results_config(saved["config"]) != _results_config(spec["config"]):
            raise ValueError(f"{path}: this folder holds a grid run with another configuration; use a new --out")
        saved_given = saved.get("pretrained_sha256", {})
        # an initialisation run before must come from the same weights (None: pre-trained in this folder)
        clash = sorted(i for i in inits if i in saved["inits"] and saved_given.get(i) != given.get(i))
        if clash:
            raise ValueError(f"{path}: this folder's {', '.join(clash)} results were made from other pre-trained "
                             "weights (or pre-trained here instead of given); use a new --out")
        given = {**saved_given, **given}
        spec["pretrained_sha256"] = given
        # a later call may widen the grid; keep the union
        for key in ("inits", "n_labelled", "seeds"):
            spec[key] = list(dict.fromkeys(saved[key] + spec[key]))
        spec["dice_resolution"] = saved.get("dice_resolution", "resampled")
    atomic_write_text(path, json.dumps(spec, indent=2) + "\n")
    return spec["dice_resolution"]


def _results_config(config: dict) -> dict:
    """A saved config as JSON data, with defaults for parts it predates, without the speed settings."""
    return RunConfig.from_dict(config).results_dict()
