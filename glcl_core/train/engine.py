"""One training loop for every stage: resume, atomic checkpoints, progress, history.

A stage supplies a ``step()`` function (one optimisation step, returning its metrics) and the objects whose state
must survive an interruption (modules, optimiser, sampler, random generator). The loop saves and restores exactly
those, so on CPU with a fixed seed an interrupted and resumed run ends with the weights of an uninterrupted one.

Under torchrun every rank runs the loop in lockstep; only rank 0 writes ``last.pt`` and ``history.csv`` and shows a
progress bar, and on resume rank 0 reads ``last.pt`` and sends it to the others (no shared disk needed).
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from glcl_core import distributed
from glcl_core.train.checkpoint import load_checkpoint, save_checkpoint, write_history


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class GeneratorState:
    """Adapts a ``torch.Generator`` to the state_dict protocol.

    Under torchrun each rank has its own generator (e.g. for augmentation): ``state_dict`` (a collective, called on
    every rank) also keeps every rank's state under ``"ranks"``, and each rank restores its own. Resumed with another
    number of processes, ranks > 0 derive a fresh stream from rank 0's state.
    """

    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def state_dict(self) -> dict[str, Any]:
        state = self.generator.get_state()
        if not distributed.is_distributed():
            return {"state": state}
        ranks = distributed.all_gather_object(state)
        return {"state": ranks[0], "ranks": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ranks = state.get("ranks")
        r = distributed.rank()
        if ranks is not None and len(ranks) == distributed.world_size():
            self.generator.set_state(ranks[r])
            return
        self.generator.set_state(state["state"])
        if r > 0:
            seed = int(torch.randint(2**62, (1,), generator=self.generator))
            self.generator.manual_seed(seed + r)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (a ``KeyboardInterrupt``) during a training loop, with where it stopped.

    ``step``: steps completed; ``checkpoint_step``: the step of the run folder's ``last.pt`` (the one a resumed run
    continues from; 0 when none was written); ``out``: the run folder (None for an in-memory run)."""

    def __init__(self, step: int, checkpoint_step: int, out: Path | None, desc: str = ""):
        super().__init__(f"{desc}: interrupted at step {step}" if desc else f"interrupted at step {step}")
        self.step, self.checkpoint_step, self.out, self.desc = step, checkpoint_step, out, desc

    def __reduce__(self):
        return (type(self), (self.step, self.checkpoint_step, self.out, self.desc))


@dataclass
class LoopResult:
    history: list[dict[str, Any]]
    steps_done: int
    seconds: float  # wall time of the steps run in this call
    cpu_seconds: float = 0.0  # CPU time of this process over the same steps (all its threads): unlike the wall
    # time, it does not grow when other programs share the cores
    extra: dict[str, Any] = field(default_factory=dict)


def run_loop(
    step: Callable[[int], dict[str, float]],
    stateful: dict[str, Stateful],
    iterations: int,
    out: Path | None,
    resume: bool,
    checkpoint_every: int,
    log_every: int,
    images_per_step: int,
    desc: str,
    progress: bool | str | None = None,
    on_checkpoint: Callable[[], dict[str, Any]] | None = None,
    on_restore: Callable[[dict[str, Any]], None] | None = None,
) -> LoopResult:
    """Run ``step(i)`` for ``i = start .. iterations - 1``.

    Args:
        step: one optimisation step; returns metrics such as ``{"loss": 0.7}``.
        stateful: objects saved in every checkpoint under their key (modules, optimiser, sampler, generator).
        out: run folder (``last.pt`` and ``history.csv`` are written there), or None for an in-memory run.
        resume: continue from ``out/last.pt`` if it exists.
        progress: True/False: a progress bar or none; None: a bar in a notebook or terminal only; ``"lines"``:
            one printed line per logged step (for logs, e.g. the command line outside a terminal).
        on_checkpoint / on_restore: extra state of the stage (e.g. the best validation weights).

    Ctrl-C (``KeyboardInterrupt``) inside the loop is raised again as :class:`TrainingInterrupted`, which says how
    many steps were done and the step of the last checkpoint; ``last.pt`` stays the last complete checkpoint
    (checkpoints are written atomically), so ``resume=True`` continues from it.
    """
    history: list[dict[str, Any]] = []
    start = 0
    last = out / "last.pt" if out is not None else None
    writer = distributed.is_main()  # under torchrun only rank 0 touches the run folder
    ckpt = None
    progress_state = {"done": 0, "saved": 0}  # steps completed, step of last.pt (for TrainingInterrupted)
    if resume and last is not None:
        ckpt = distributed.broadcast_object(load_checkpoint(last) if writer and last.exists() else None)
    if ckpt is not None:
        for key, obj in stateful.items():
            obj.load_state_dict(ckpt["state"][key])
        history = list(ckpt["history"])
        start = int(ckpt["step"])
        progress_state.update(done=start, saved=start)
        if on_restore is not None:
            on_restore(ckpt.get("extra", {}))

    def save(steps_done: int) -> None:
        if last is None:
            return
        state = {  # on every rank: a state_dict may be a collective (GeneratorState)
            "state": {key: obj.state_dict() for key, obj in stateful.items()},
            "history": history,
            "step": steps_done,
            "extra": on_checkpoint() if on_checkpoint is not None else {},
        }
        if writer:
            save_checkpoint(last, state)
            progress_state["saved"] = steps_done
            write_history(out / "history.csv", history)

    lines = progress == "lines" and writer
    bar = _progress_bar(total=iterations, initial=start, desc=desc,
                        enabled=(progress if not lines else False) if writer else False)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    try:
        _steps(step, range(start, iterations), iterations, history, save, bar, lines, desc, images_per_step,
               log_every, checkpoint_every, progress_state)
    except KeyboardInterrupt as err:
        if bar is not None:
            bar.close()
        if isinstance(err, TrainingInterrupted):
            raise
        raise TrainingInterrupted(progress_state["done"], progress_state["saved"], out, desc) from err
    if bar is not None:
        bar.close()
    return LoopResult(history=history, steps_done=iterations, seconds=time.perf_counter() - t_start,
                      cpu_seconds=time.process_time() - cpu_start)


def _steps(step, indices, iterations, history, save, bar, lines, desc, images_per_step, log_every,
           checkpoint_every, state) -> None:
    """The loop of :func:`run_loop`; it counts completed steps in ``state["done"]``."""
    t_window, images_window = time.perf_counter(), 0
    for i in indices:
        metrics = step(i)
        state["done"] = i + 1
        images_window += images_per_step
        if (i + 1) % log_every == 0 or i + 1 == iterations:
            now = time.perf_counter()
            rate = images_window / max(now - t_window, 1e-9)
            row = {"step": i + 1, **{k: float(v) for k, v in metrics.items()}, "images_per_s": rate}
            history.append(row)
            if bar is not None:
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k != "step"}, refresh=False)
            if lines:
                shown = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "step")
                print(f"{desc} step {i + 1}/{iterations}  {shown}", flush=True)
            t_window, images_window = now, 0
            loss = row.get("loss")
            if loss is not None and not math.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {loss} at step {i + 1}")
        if bar is not None:
            bar.update(1)
        if (i + 1) % checkpoint_every == 0 or i + 1 == iterations:
            save(i + 1)


def _progress_bar(total: int, initial: int, desc: str, enabled: bool | None):
    """A tqdm bar (a widget in notebooks). ``enabled=None``: only in a notebook or an interactive terminal,
    so logs and CI output stay readable, and not when ``GLCL_PROGRESS=0`` (set for batch execution of the
    chapters: a saved notebook keeps no widget state, so a bar would render as an empty box)."""
    if enabled is None:
        enabled = os.environ.get("GLCL_PROGRESS", "1") != "0" and (_in_notebook() or sys.stderr.isatty())
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"
