"""Timing and peak-memory helpers shared by the benchmark scripts.

Timing: wall clock around a callable, with CUDA synchronised before and after; one warm-up call, then the best
(minimum) of ``repeats`` calls, the figure least disturbed by other processes on a shared machine (a single call
when the warm-up already took longer than ``long_call`` seconds).

Peak memory:

* CUDA: ``torch.cuda.max_memory_allocated`` over the call minus what was allocated before it (tensors only, not the
  caching allocator's reserve).
* CPU: there is no allocator counter, so each case runs once in a fresh subprocess and reports how far the peak
  resident set size rose above the resident size just before the call (inputs and model already built). On Linux
  the peak is the kernel's per-process high-water mark ``VmHWM``, reset just before the call through
  ``/proc/self/clear_refs``; elsewhere ``getrusage().ru_maxrss`` (which a child may inherit from a larger parent,
  so the figure can read low there). It counts everything the call touches (tensors, autograd buffers, allocator
  slack, thread-pool start-up): an honest "how much more RAM does this need", not a tensor-only figure.
"""
from __future__ import annotations

import gc
import json
import resource
import subprocess
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 3, long_call: float = 2.0,
              reduce: str = "min") -> float:
    """Seconds of ``fn()`` after one warm-up call (the warm-up alone if it took > ``long_call``): the best
    (``reduce="min"``) or the median (``reduce="median"``) of ``repeats`` calls."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - start
    if first > long_call or repeats < 1:
        return first
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    if reduce == "median":
        return statistics.median(times)
    if reduce != "min":
        raise ValueError(f"reduce must be 'min' or 'median', got {reduce!r}")
    return min(times)


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**10  # kB
    except OSError:
        return None
    return None


def _reset_high_water() -> bool:
    """Reset this process's peak-RSS mark to its current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_high_water_mb() -> float:
    """Peak resident set size of this process, in MiB (``VmHWM`` on Linux, else ``ru_maxrss``)."""
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def cpu_peak_delta_mb(fn: Callable[[], object]) -> float:
    """How far the peak RSS rises above the current RSS during ``fn()`` (call once, in a fresh process)."""
    gc.collect()
    if _reset_high_water() and _proc_status_mb("VmRSS") is not None:
        before = _proc_status_mb("VmRSS")
    else:
        before = rss_high_water_mb()
    fn()
    return max(0.0, rss_high_water_mb() - before)


def cuda_peak_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak CUDA tensor memory of ``fn()`` above what was allocated before it, in MiB."""
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def run_child(module: str, payload: dict, timeout: float = 900.0) -> dict:
    """Run ``python -m module --child JSON`` from the repository root; return the JSON its last line prints."""
    proc = subprocess.run(
        [sys.executable, "-m", module, "--child", json.dumps(payload)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width table (markdown-compatible)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def fmt_mb(mb: float | None) -> str:
    if mb is None:
        return "-"
    return f"{mb:.0f} MB" if mb >= 1 else f"{mb:.2f} MB"
