"""Estimated time per chapter on a free Colab T4 at the ``cpu`` profile: an ESTIMATE, no T4 was available.

    OMP_NUM_THREADS=1 GLCL_DATA_DIR=.cache/glcl_data NUMBA_CACHE_DIR=.cache/numba \\
        .venv/bin/python benchmarks/colab_estimate.py            # prints the tables, writes results/colab_estimate.md
    .venv/bin/python benchmarks/colab_estimate.py --steps 3 --no-one-off --out /tmp/x.md   # quicker, no builds

The chapters run the ``cpu`` profile on every device, a Colab GPU included (they load the shipped checkpoints), so
the question is how much faster the same work runs when the network's forward/backward moves to a T4 while the rest
of a step stays on Colab's 2 vCPUs. Method:

1. Per training stage at the ``cpu`` profile's shapes ("global GD", "global PCL", "local LR", "finetune"), with the
   functions of benchmarks/train_step.py, on this CPU with one thread: the *step* seconds (the real training
   function, the fastest logged step after a warm-up), the *floor* seconds (forward + backward of the same modules
   on a fixed batch, the fastest call) and the FLOPs of one such forward + backward (``torch.utils.flop_counter.
   FlopCounterMode`` around the floor's own function, forward and backward: convolutions and matrix products;
   element-wise work such as batch norm and activations is not counted, which the effective throughput below
   absorbs). Times are CPU seconds of this process (``time.process_time`` stands in for ``time.perf_counter``
   while measuring) and the fastest of a few, so other jobs on a shared machine inflate them as little as possible;
   the chapter times are CPU seconds too. train_step logs every step, and a logged step of a contrastive stage also
   takes its health measure (forward passes on two held-out batches); the chapters log every ``log_every`` = 10
   steps, so that measure is timed separately and counted at 1/10 per step. From these: this CPU's achieved
   FLOP/s on the network (FLOPs / floor) and the non-network seconds per step (step - floor: sampling,
   augmentation, loss, optimiser bookkeeping, the health measure's share), at least 10 % of the step: two floors
   of the same network and batch (the two global stages) differ by up to about 10 % on this shared machine, so a
   smaller difference is not resolved.
2. A T4 model. The non-network seconds stay on the CPU: Colab's 2 vCPUs are assumed to be as fast per core as this
   machine's (``--colab-cpu-factor`` scales them; in fact loss and optimiser move to the GPU too, so this part is
   pessimistic). The network seconds become FLOPs / effective throughput, with a per-step floor for kernel launches
   and synchronisation: estimated T4 step = non-network CPU seconds + max(FLOPs / throughput, overhead).
   T4 peaks: 65 TFLOP/s fp16 on tensor cores, 8.1 TFLOP/s fp32. The 96-px U-Net's small convolutions reach a
   fraction of a peak; glcl_core's autocast runs fp16 on a T4 (``glcl_core.device.autocast_dtype``: bf16 only
   from compute capability 8). Hence the range: pessimistic 1 TFLOP/s and 15 ms per step (small kernels that
   reach about an eighth of the fp32 peak, as if the tensor cores were not used), optimistic 8 TFLOP/s and 5 ms
   per step (fp16 on tensor cores).
3. Per chapter: its CPU seconds in the ``cpu`` profile (results/chapter_times.csv: the latest row per chapter with
   profile ``cpu``, one thread) are assumed to be spent in training steps of the stages it runs (chapters 2 and 3:
   global stages; 4: local stage and fine-tuning; 5: fine-tuning); chapters 1, 6 and 7 are analysis only and get
   no speed-up. With the stages' network share s = 1 - non-network / step and ratio r = T4 network seconds / CPU
   network seconds, each averaged over the chapter's stages: T4 chapter = cpu_s x (1 - s) + cpu_s x s x r. The
   *break-even share* is the smallest s for which the chapter (with its one-off costs) still fits in the budget: the
   estimate holds as long as at least that share of the chapter's CPU time is network work.
4. Colab's one-off costs, per chapter (each chapter opened from its badge gets a fresh runtime): installing
   glcl_core (1 to 2 minutes, an estimate), CUDA start-up (an estimate) and, measured here, building the embedded
   data sets the chapter uses into a fresh temporary folder (``embedded_dataset(root=..., params=preset)``) and,
   for the chapters with a UMAP (2, 3), numba's first compilation in a fresh cache.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common, train_step  # noqa: E402
from benchmarks.common import REPO_ROOT, format_table  # noqa: E402
from glcl_core.experiment import prepare_split  # noqa: E402
from glcl_core.train import monitor  # noqa: E402
from glcl_core.train.config import make_config  # noqa: E402

TIMES = REPO_ROOT / "results" / "chapter_times.csv"
OUT = REPO_ROOT / "results" / "colab_estimate.md"
BUDGET_MIN = 20.0
# The smallest non-network share of a step this method resolves: step and floor are two timings on a shared
# machine, and two floors of the same network and batch (the two global stages) differ by up to about 10 %, so a
# smaller step - floor is taken as 10 % of the step.
RESOLUTION = 0.10

# T4 model: (label, effective network throughput in FLOP/s, per-step launch/synchronisation floor in s)
SCENARIOS = {
    "pessimistic": (1e12, 0.015),
    "optimistic": (8e12, 0.005),
}
INSTALL_MIN = {"pessimistic": 2.0, "optimistic": 1.0}  # pip install of glcl_core on Colab (estimate)
CUDA_START_MIN = {"pessimistic": 0.5, "optimistic": 0.2}  # CUDA context, first cuDNN kernels (estimate)

# which training stages a chapter runs in the cpu profile (empty: analysis only, no speed-up)
CHAPTER_STAGES = {
    "01": (),
    "02": ("global GD",),  # G^R, G^D-, G^D: global steps of m x S slices
    "03": ("global GD", "global PCL"),  # PCL on G^D-shaped batches, PCL's own recipe (24-32 random slices)
    "04": ("local LR", "finetune"),  # local-loss ablation: local steps then fine-tuning (+ 50 global steps)
    "05": ("finetune",),  # the low-label grid from the shipped checkpoints
    "06": (),
    "07": (),
}
# embedded data presets a chapter builds on first use
CHAPTER_PRESETS = {
    "01": ("standard", "varied", "multicontrast"),
    "02": ("multicontrast",),
    "03": ("multicontrast",),
    "04": ("standard",),
    "05": ("multicontrast",),
    "06": ("standard", "varied", "multicontrast"),
    "07": (),
}
CHAPTER_UMAP = {"02", "03"}  # chapters whose UMAP compiles numba code on first use


# ----------------------------------------------------------------------------------------------- measurements
def step_seconds(stage: str, base, split, device: torch.device, warmup: int, steps: int):
    """The real training function (``train_step.stage_config`` / ``run_stage``): the fastest of the logged steps
    after the warm-up (seconds), images per step and the configuration."""
    cfg = train_step.stage_config(stage, base.profile, warmup + steps, dataclasses.asdict(base.speed))
    history, images = train_step.run_stage(stage, cfg, split, device)
    rates = list(history["images_per_s"])[warmup:]
    return min(images / r for r in rates), images, cfg


def floor_and_flops(stage: str, cfg, device: torch.device, images: int, repeats: int) -> tuple[float, int]:
    """benchmarks.train_step's floor (seconds: the fastest of ``repeats`` calls) and the FLOPs of one call of the
    same forward + backward.

    ``train_step._floor`` builds the modules and the step function and hands it to ``time_call``; here that
    ``time_call`` is wrapped for the one call so the very same function is also run once under FlopCounterMode,
    and the fastest call is kept rather than the median (the statistic of :func:`step_seconds`)."""
    counted: dict[str, int] = {}

    def timed_and_counted(fn, dev, **kwargs):
        seconds = common.time_call(fn, dev, **{**kwargs, "reduce": "min"})
        with FlopCounterMode(display=False) as counter:
            fn()
        counted["flops"] = int(counter.get_total_flops())
        return seconds

    original = train_step.time_call
    train_step.time_call = timed_and_counted
    try:
        seconds = train_step._floor(stage, cfg, device, images, repeats=repeats)
    finally:
        train_step.time_call = original
    return seconds, counted["flops"]


@contextlib.contextmanager
def cpu_clock(enabled: bool = True):
    """While active, ``time.perf_counter`` reads this process's CPU seconds (``time.process_time``): the training
    engine's per-step rates and ``time_call`` then count the work of this process only, not the wait for a core
    that other jobs on a shared machine hold (the chapter times are CPU seconds too)."""
    original = time.perf_counter
    if enabled:
        time.perf_counter = time.process_time
    try:
        yield
    finally:
        time.perf_counter = original


@contextlib.contextmanager
def timed_health():
    """Record the seconds of every health measure (``GlobalMonitor.measure``, ``LocalMonitor.measure``) by class.

    train_step times a stage with a log row, hence a health measure, at every step; the chapters log (and
    measure) every ``log_every`` = 10 steps, so the measure is taken out of the step and put back at 1/10."""
    calls: dict[str, list[float]] = {"global": [], "local": []}
    originals = {"global": monitor.GlobalMonitor.measure, "local": monitor.LocalMonitor.measure}

    def wrap(kind):
        def measure(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return originals[kind](self, *args, **kwargs)
            finally:
                calls[kind].append(time.perf_counter() - start)
        return measure

    monitor.GlobalMonitor.measure, monitor.LocalMonitor.measure = wrap("global"), wrap("local")
    try:
        yield calls
    finally:
        monitor.GlobalMonitor.measure, monitor.LocalMonitor.measure = originals["global"], originals["local"]


def measure_stages(stages, warmup: int, steps: int, cpu_seconds: bool = True) -> list[dict]:
    device = torch.device("cpu")  # this estimate measures the CPU, whatever else the machine has
    torch.manual_seed(0)
    base = make_config("cpu")
    split = prepare_split(base)
    rows = []
    for stage in stages:
        kind = "global" if stage.startswith("global") else "local" if stage.startswith("local") else None
        with cpu_clock(cpu_seconds), timed_health() as health:
            step, images, cfg = step_seconds(stage, base, split, device, warmup, steps)
        with cpu_clock(cpu_seconds):
            floor, flops = floor_and_flops(stage, cfg, device, images, repeats=steps)
        measured = health[kind][-steps:] if kind else []  # the timed steps' measures (a local run starts global)
        health_s = min(measured) if measured else 0.0
        stage_cfg = {"global": base.global_, "local": base.local}.get(kind)
        log_every = stage_cfg.log_every if stage_cfg is not None else 1
        rows.append({"stage": stage, "size": cfg.data.size, "images": images, "step_s": step, "floor_s": floor,
                     "flops": flops, "health_s": health_s, "log_every": log_every,
                     # the step as a chapter runs it: a health measure every log_every steps
                     "chapter_step_s": step - health_s + (health_s / log_every if kind else 0.0)})
        print(f"  {stage}: {cfg.data.size}px x {images}, step {step * 1e3:.0f} ms (health measure "
              f"{health_s * 1e3:.0f} ms of it), floor {floor * 1e3:.0f} ms, {flops / 1e9:.1f} GFLOP", flush=True)
    return rows


def time_dataset_builds(presets, clock=time.process_time) -> dict[str, float]:
    """Seconds (CPU seconds of this process by default: the build is single-process) to build each embedded preset
    from nothing, into a fresh temporary folder."""
    from glcl_core.data import embedded_dataset

    out = {}
    for preset in presets:
        with tempfile.TemporaryDirectory(prefix="glcl_colab_estimate_") as tmp:
            start = clock()
            embedded_dataset(root=tmp, params=preset)
            out[preset] = clock() - start
        print(f"  embedded data set {preset!r}: {out[preset]:.0f} s", flush=True)
    return out


_UMAP_CHILD = """
import sys, time, numpy as np
clock = getattr(time, sys.argv[1])
start = clock()
from glcl_core.analysis.embeddings import umap_2d
umap_2d(np.random.default_rng(0).normal(size=(300, 32)).astype("float32"))
first = clock() - start
start = clock()
umap_2d(np.random.default_rng(1).normal(size=(300, 32)).astype("float32"))
print(first, clock() - start)
"""


def time_umap_compile(clock: str = "process_time") -> float:
    """Extra seconds (CPU seconds of the child by default) of the first UMAP in a fresh numba cache: the first call
    minus a second, compiled one."""
    with tempfile.TemporaryDirectory(prefix="glcl_colab_numba_") as tmp:
        env = {**os.environ, "NUMBA_CACHE_DIR": tmp}
        proc = subprocess.run([sys.executable, "-c", _UMAP_CHILD, clock], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    first, second = map(float, proc.stdout.split()[-2:])
    print(f"  numba first compilation (UMAP): {first - second:.0f} s", flush=True)
    return max(0.0, first - second)


# ------------------------------------------------------------------------------------------------- the model
def non_network_s(row: dict) -> float:
    """CPU seconds per (chapter) step outside the network: step - floor, at least ``RESOLUTION`` of the step."""
    return max(row["chapter_step_s"] - row["floor_s"], RESOLUTION * row["chapter_step_s"])


def t4_stage(row: dict, scenario: str, cpu_factor: float) -> dict:
    """The T4 step of a stage as a chapter runs it (health measure every ``log_every`` steps, kept on the CPU)."""
    throughput, overhead = SCENARIOS[scenario]
    step = row["chapter_step_s"]
    network = max(row["flops"] / throughput, overhead)
    non_network = non_network_s(row)
    cpu_network = step - non_network
    return {"step_s": non_network * cpu_factor + network,
            "share": cpu_network / step,
            "ratio": network / cpu_network}


def latest_cpu_rows(path: Path = TIMES) -> dict[str, dict]:
    """{chapter number: row}: the latest ``cpu`` row per chapter (latest date, then latest in the file)."""
    rows = {}
    with open(path, newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh)):
            if row["profile"] != "cpu":
                continue
            key = row["chapter"][:2]
            if key not in rows or (row["date"], i) >= (rows[key]["date"], rows[key]["_i"]):
                rows[key] = {**row, "_i": i}
    return dict(sorted(rows.items()))


def chapter_estimates(stage_rows, chapters, builds, umap_s, cpu_factor) -> list[dict]:
    by_stage = {r["stage"]: r for r in stage_rows}
    out = []
    for key, row in chapters.items():
        cpu_s = float(row["cpu_s"])
        stages = [s for s in CHAPTER_STAGES.get(key, ()) if s in by_stage]
        est = {"chapter": row["chapter"], "date": row["date"], "cpu_s": cpu_s, "stages": stages}
        for scenario in SCENARIOS:
            if stages:
                models = [t4_stage(by_stage[s], scenario, cpu_factor) for s in stages]
                share = sum(m["share"] for m in models) / len(models)
                ratio = sum(m["ratio"] for m in models) / len(models)
            else:
                share, ratio = 0.0, 1.0
            run_s = cpu_s * (1 - share) * cpu_factor + cpu_s * share * ratio
            one_off_s = 60 * (INSTALL_MIN[scenario] + CUDA_START_MIN[scenario])
            one_off_s += sum(builds.get(p, 0.0) for p in CHAPTER_PRESETS.get(key, ())) * cpu_factor
            one_off_s += (umap_s * cpu_factor) if key in CHAPTER_UMAP else 0.0
            total = run_s + one_off_s
            # smallest network share s with cpu_s * (1 - s (1 - ratio)) + one-off <= budget
            spare = 60 * BUDGET_MIN - one_off_s
            if cpu_s * cpu_factor <= spare:
                breakeven = 0.0
            elif ratio < cpu_factor and stages:
                breakeven = (cpu_s * cpu_factor - spare) / (cpu_s * (cpu_factor - ratio))
            else:
                breakeven = float("inf")
            est[scenario] = {"share": share, "ratio": ratio, "run_s": run_s, "one_off_s": one_off_s,
                             "total_s": total, "breakeven": breakeven}
        out.append(est)
    return out


# ------------------------------------------------------------------------------------------------- reporting
def _share(x: float) -> str:
    return "none needed" if x <= 0 else ("cannot fit" if x == float("inf") or x > 1 else f"{x:.0%}")


def tables(stage_rows, estimates, builds, umap_s, cpu_factor, unit: str = "CPU s") -> tuple[str, str, str]:
    stage_table = []
    for r in stage_rows:
        pess, opt = (t4_stage(r, s, cpu_factor) for s in ("pessimistic", "optimistic"))
        stage_table.append([
            r["stage"], f"{r['size']}px x {r['images']}", f"{r['step_s'] * 1e3:.0f}",
            f"{r['health_s'] * 1e3:.0f}" if r["health_s"] else "-",
            f"{r['chapter_step_s'] * 1e3:.0f}", f"{r['floor_s'] * 1e3:.0f}",
            f"{non_network_s(r) * 1e3:.0f}" + ("*" if r["chapter_step_s"] - r["floor_s"] < non_network_s(r) else ""),
            f"{r['flops'] / 1e9:.1f}",
            f"{r['flops'] / r['floor_s'] / 1e9:.0f}", f"{pess['share']:.0%}",
            f"{pess['step_s'] * 1e3:.0f} / {opt['step_s'] * 1e3:.0f}",
            f"{r['chapter_step_s'] / pess['step_s']:.1f}x / {r['chapter_step_s'] / opt['step_s']:.1f}x"])
    stage_md = format_table(["stage", "batch", "CPU step ms (measured)", "health measure ms",
                             "CPU step ms (chapter)", "floor ms", "non-network ms", "GFLOP / step",
                             "CPU GFLOP/s", "network share", "est. T4 step ms (pess. / opt.)",
                             "speed-up (pess. / opt.)"], stage_table)

    chapter_table = []
    for e in estimates:
        p, o = e["pessimistic"], e["optimistic"]
        fits = "yes" if p["total_s"] <= 60 * BUDGET_MIN else ("only optimistic" if o["total_s"] <= 60 * BUDGET_MIN
                                                                else "no")
        chapter_table.append([
            e["chapter"], f"{e['cpu_s'] / 60:.1f}", ", ".join(e["stages"]) or "analysis (no speed-up)",
            f"{p['run_s'] / 60:.1f} / {o['run_s'] / 60:.1f}", f"{p['one_off_s'] / 60:.1f} / {o['one_off_s'] / 60:.1f}",
            f"{p['total_s'] / 60:.1f} / {o['total_s'] / 60:.1f}", fits,
            f"{_share(p['breakeven'])} (est. {p['share']:.0%})" if e["stages"] else _share(p["breakeven"])])
    chapter_md = format_table(["chapter", "CPU min here (cpu profile, 1 thread)", "stages",
                               "est. T4 run min (pess. / opt.)", "one-off min (pess. / opt.)",
                               "est. T4 total min (pess. / opt.)", f"<= {BUDGET_MIN:.0f} min?",
                               "break-even network share (pess.)"], chapter_table)

    one_off = [["install glcl_core (pip, on Colab)", f"{INSTALL_MIN['optimistic']:.0f} to "
                f"{INSTALL_MIN['pessimistic']:.0f} min", "estimate", "every chapter"],
               ["CUDA start-up (context, first kernels)", f"{CUDA_START_MIN['optimistic'] * 60:.0f} to "
                f"{CUDA_START_MIN['pessimistic'] * 60:.0f} s", "estimate", "every chapter"]]
    for preset, s in builds.items():
        users = ", ".join(k for k, v in CHAPTER_PRESETS.items() if preset in v)
        one_off.append([f"build embedded data set `{preset}` (20 subjects)", f"{s:.0f} s", f"measured here ({unit})",
                        f"chapters {users}"])
    if umap_s is not None:
        one_off.append(["numba first compilation (UMAP)", f"{umap_s:.0f} s", f"measured here ({unit})",
                        "chapters " + ", ".join(sorted(CHAPTER_UMAP))])
    one_off_md = format_table(["one-off cost on a fresh Colab runtime", "time", "source", "applies to"], one_off)
    return stage_md, chapter_md, one_off_md


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} {os.cpu_count()} cores ({model}), torch {torch.__version__}, " \
           f"{torch.get_num_threads()} thread(s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", default=list(train_step.STAGES), choices=train_step.STAGES)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per stage (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--no-one-off", action="store_true", help="skip the data-set builds and numba compilation")
    parser.add_argument("--colab-cpu-factor", type=float, default=1.0,
                        help="Colab vCPU time per unit of this machine's CPU time (1: as fast per core)")
    parser.add_argument("--wall-clock", action="store_true",
                        help="time stages in wall-clock seconds (default: this process's CPU seconds)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    command = "OMP_NUM_THREADS={} GLCL_DATA_DIR={} NUMBA_CACHE_DIR={} .venv/bin/python {}".format(
        os.environ.get("OMP_NUM_THREADS", "1"), os.environ.get("GLCL_DATA_DIR", "(default)"),
        os.environ.get("NUMBA_CACHE_DIR", "(default)"),
        shlex.join(["benchmarks/colab_estimate.py", *sys.argv[1:]]))

    print("training stages at the cpu profile's shapes, on this CPU:", flush=True)
    stage_rows = measure_stages(args.stages, args.warmup, args.steps, cpu_seconds=not args.wall_clock)
    builds, umap_s = {}, None
    if not args.no_one_off:
        print("one-off costs of a fresh runtime:", flush=True)
        builds = time_dataset_builds(("standard", "varied", "multicontrast"),
                                     clock=time.perf_counter if args.wall_clock else time.process_time)
        umap_s = time_umap_compile("perf_counter" if args.wall_clock else "process_time")
    chapters = latest_cpu_rows()
    estimates = chapter_estimates(stage_rows, chapters, builds, umap_s or 0.0, args.colab_cpu_factor)
    stage_md, chapter_md, one_off_md = tables(stage_rows, estimates, builds, umap_s, args.colab_cpu_factor,
                                              "wall s" if args.wall_clock else "CPU s")

    # sensitivity: the worst chapter if Colab's vCPUs are 1.5x slower than this machine's cores
    slow = chapter_estimates(stage_rows, chapters, builds, umap_s or 0.0, 1.5 * args.colab_cpu_factor)
    worst = max(slow, key=lambda e: e["pessimistic"]["total_s"])
    worst_fast = max(estimates, key=lambda e: e["pessimistic"]["total_s"])
    verdict = all(e["pessimistic"]["total_s"] <= 60 * BUDGET_MIN for e in estimates)
    log_every = make_config("cpu").global_.log_every
    floors = {r["stage"]: r["floor_s"] for r in stage_rows}
    floor_note = ""
    if "global GD" in floors and "global PCL" in floors:  # the same network on the same batch shape
        spread = abs(floors["global GD"] - floors["global PCL"]) / min(floors["global GD"], floors["global PCL"])
        floor_note = (f"; in this run the floors of the two global stages, the same network and batch, differ by "
                      f"{spread:.0%}")
    longest = f"{worst_fast['chapter']}, {worst_fast['pessimistic']['total_s'] / 60:.1f} min"
    pess_thr, pess_ovh = SCENARIOS["pessimistic"]
    opt_thr, opt_ovh = SCENARIOS["optimistic"]

    text = f"""# Colab T4 time per chapter (cpu profile)

**Estimate, not a measurement: no T4 was available.** The per-stage CPU figures and the data-set builds were
measured on this machine; the T4 side is a model (below).

* Date: {datetime.date.today().isoformat()}
* Machine: {machine()}
* Command: `{command}`
* Chapter CPU times: `results/chapter_times.csv`, latest `cpu` row per chapter (dates
  {", ".join(sorted({e["date"] for e in estimates}))})

## Per chapter

{chapter_md}

"Run" is the chapter's own work; "one-off" is what a fresh Colab runtime adds (each chapter opened from its badge
gets its own): installing glcl_core, CUDA start-up and the first build of the data sets the chapter uses (see the
table below). Pessimistic T4: {pess_thr / 1e12:g} TFLOP/s effective, {pess_ovh * 1e3:.0f} ms per step at least;
optimistic: {opt_thr / 1e12:g} TFLOP/s, {opt_ovh * 1e3:.0f} ms. The break-even network share is the smallest
share of a chapter's CPU time that must be network work (moved to the T4) for the pessimistic total to stay within
{BUDGET_MIN:.0f} minutes; "est." is the share this model assumes (1 - non-network / step, averaged over the
chapter's stages). Every chapter within {BUDGET_MIN:.0f} minutes in the pessimistic case:
**{"yes" if verdict else "no"}** (longest: {longest}). Sensitivity: if Colab's vCPUs
were 1.5x slower per core than this machine's, the longest chapter would take
{worst["pessimistic"]["total_s"] / 60:.1f} min ({worst["chapter"]}, pessimistic).

## Per training stage (cpu profile shapes, this CPU, one thread)

{stage_md}

Step (measured): the real training function, fastest of {args.steps} logged steps after {args.warmup} warm-up
step(s). These runs log every step, so every measured step of a contrastive stage includes its health measure
(forward passes on two held-out batches; fastest call in "health measure ms"). Step (chapter): the same with the
health measure once every {log_every} steps, as the chapters log (the cpu profile's `log_every`); the model uses
this one. Floor: forward + backward of the same modules on a fixed batch, fastest of {args.steps} calls
(benchmarks/train_step.py). Times are {"wall-clock" if args.wall_clock else "CPU"} seconds of this process.
GFLOP / step: one floor call counted by `torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix
products, forward and backward). Non-network ms: step (chapter) - floor, kept on the CPU; * marks a stage where
that difference is below {RESOLUTION:.0%} of the step, and {RESOLUTION:.0%} of the step is used instead (the
resolution of two timings on this shared machine{floor_note}). Network share = 1 - non-network / step. Est. T4
step = non-network ms + max(GFLOP / throughput, per-step overhead).

## One-off costs

{one_off_md}

## Method

1. Per stage at the `cpu` profile's shapes, on this CPU with one thread (CPU seconds of the process, fastest of a
   few): step seconds (with the health measure at the chapters' rate), floor seconds (network forward + backward
   only) and the floor's FLOPs. This CPU's achieved FLOP/s = FLOPs / floor; non-network seconds per step =
   step - floor (sampling, augmentation, loss, optimiser bookkeeping), at least {RESOLUTION:.0%} of the step.
2. T4 model: the non-network seconds stay on Colab's 2 vCPUs, assumed as fast per core as this machine's (loss
   and optimiser would in fact move to the GPU, so this is pessimistic); network seconds = FLOPs / effective
   throughput, at least a per-step launch/synchronisation floor. T4 peaks are 65 TFLOP/s fp16 (tensor cores) and
   8.1 TFLOP/s fp32; small 96-px convolutions reach a fraction of that. Pessimistic {pess_thr / 1e12:g} TFLOP/s
   and {pess_ovh * 1e3:.0f} ms: small kernels that reach about an eighth of the fp32 peak, as if the tensor cores
   were not used. Optimistic {opt_thr / 1e12:g} TFLOP/s and {opt_ovh * 1e3:.0f} ms: fp16 on tensor cores, which
   glcl_core's autocast picks on a T4 (`glcl_core.device.autocast_dtype`: bf16 only from compute capability 8).
3. Per chapter: the chapter's CPU seconds are taken as training steps of its stages (2: global G^D-shaped steps;
   3: global G^D-shaped and PCL steps; 4: local stage and fine-tuning; 5: fine-tuning), with the network share
   s and T4/CPU network ratio r averaged over those stages: T4 = cpu_s (1 - s) + cpu_s s r. Chapters 1, 6, 7 are
   analysis only and get no speed-up. Evaluation, health measures and embeddings are network forwards too and
   would also speed up; UMAP, kNN and plotting would not, which the break-even column bounds.
4. One-off costs per fresh runtime: pip install (estimate), CUDA start-up (estimate), data-set builds and numba's
   first compilation (measured here, into fresh temporary folders).
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print()
    print(f"Estimate, not a measurement: no T4 was available. {machine()}")
    print("\nper stage:\n" + stage_md)
    print("\none-off costs:\n" + one_off_md)
    print("\nper chapter:\n" + chapter_md)
    print(f"\nall chapters <= {BUDGET_MIN:.0f} min (pessimistic): {'yes' if verdict else 'no'}; with 1.5x slower "
          f"vCPUs the longest is {worst['pessimistic']['total_s'] / 60:.1f} min ({worst['chapter']})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
