"""Cost of the contrastive losses: time and peak memory, vectorised kernel vs a per-pair Python loop.

Run from the repository root::

    python -m benchmarks.losses            # full tables (several minutes on 2 CPU cores)
    python -m benchmarks.losses --quick    # fewer cases (a couple of minutes)

Every timing is forward + backward, with the masks built inside the timed call. Loss costs are also given as a share
of a "paper-size pre-training step": 2 views x 24 slices of 192x192 forward + backward through the GLCL encoder and
the dense g1 head (``glcl_core.models``; a clearly labelled stand-in conv net if that module is missing).

Peak memory (see ``benchmarks/common.py``): on CUDA, peak allocated tensor memory of the call; on CPU, the growth of
the peak resident set size while the call runs once in a fresh subprocess (inputs built first). The loop reference
is only run where it finishes in reasonable time.

Targets: global loss <= 1% of the step; sparse local <= 5%; dense 24x24 grid <= 25%; dense 48x48 grid with 24 pairs
<= 2 GB peak; vectorised kernel >= 50x faster than the loop on the paper's G^D batch (6 volumes x 4 partitions x 2
views = 48 embeddings).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys

import torch

from benchmarks.common import (
    cpu_peak_delta_mb,
    cuda_peak_mb,
    fmt_mb,
    fmt_seconds,
    format_table,
    run_child,
    time_call,
)
from glcl_core.contrastive.global_masks import GLOBAL_REDUCTION, global_loss, global_masks
from glcl_core.contrastive.kernel import info_nce_loop_reference
from glcl_core.contrastive.local_masks import local_loss, local_masks
from glcl_core.contrastive.regions import pool_regions, sparse_region_corners

MODULE = "benchmarks.losses"
MAP_SIZE, MAP_CHANNELS = 48, 64  # decoder block 3 for a 192x192 input
EMBED_DIM = 128


# ---------------------------------------------------------------------------------------------------------------
# Cases: each returns a zero-argument callable doing one forward + backward
# ---------------------------------------------------------------------------------------------------------------
def gd_metadata(n_views_total: int, device: torch.device, seed: int = 0) -> dict:
    """G^D-style batch: volumes x 4 partitions, one slice each, 2 views (``n_views_total`` = 2 x slices)."""
    g = torch.Generator().manual_seed(seed)
    slices = n_views_total // 2
    volume = torch.arange(slices) // 4
    partition = torch.arange(slices) % 4
    position = (partition + torch.rand(slices, generator=g)) / 4
    two = lambda t: torch.cat([t, t]).to(device)  # noqa: E731
    return {"image": two(torch.arange(slices)), "volume": two(volume), "partition": two(partition),
            "position": two(position)}


def global_case(n: int, strategy: str, impl: str, device: torch.device):
    meta = gd_metadata(n, device)
    z = torch.randn(n, EMBED_DIM, device=device, requires_grad=True)

    def run():
        if impl == "vectorised":
            loss = global_loss(z, meta, strategy, temperature=0.1, threshold=0.1)
        else:
            pos, neg = global_masks(strategy, **meta, threshold=0.1)
            loss = info_nce_loop_reference(z, pos, neg, 0.1, GLOBAL_REDUCTION[strategy])
        loss.backward()
        z.grad = None

    return run


def local_case(pairs: int, form: str, grid: int | None, strategy: str, impl: str, device: torch.device):
    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(pairs, MAP_CHANNELS, MAP_SIZE, MAP_SIZE, generator=g).to(device).requires_grad_(True)
    f2 = torch.randn(pairs, MAP_CHANNELS, MAP_SIZE, MAP_SIZE, generator=g).to(device).requires_grad_(True)
    meta = gd_metadata(2 * pairs, device)
    image, volume, partition = (meta[k][:pairs] for k in ("image", "volume", "partition"))
    k = 3 if form == "sparse" else MAP_SIZE // grid

    def run():
        if impl == "vectorised":
            # the loop's masks (random sparse draw, symmetric L^D), not the official per-pair defaults
            loss = local_loss(f1, f2, image, volume, partition, strategy=strategy, form=form, region_size=k,
                              n_negatives=10 if form == "sparse" else None, ld_pairs="symmetric")
        else:  # the same regions and masks, looped pair by pair over the dense (2BR, 2BR) masks
            corners = sparse_region_corners(MAP_SIZE, MAP_SIZE, k) if form == "sparse" else None
            regions = torch.cat([pool_regions(f1, k, "flatten", corners), pool_regions(f2, k, "flatten", corners)], 1)
            n_neg = 10 if form == "sparse" else None
            pos, neg = local_masks(strategy, image, volume, partition, regions.shape[1] // 2, n_negatives=n_neg)
            loss = info_nce_loop_reference(regions.reshape(-1, regions.shape[-1]), pos.to_dense(), neg.to_dense(), 0.1)
        loss.backward()
        f1.grad = f2.grad = None

    return run


def step_case(device: torch.device):
    """2 views x 24 slices, 192x192, encoder + dense g1 head, forward + backward (no loss cost: sum of squares)."""
    try:
        from glcl_core.models import GlobalHead, UNet

        model = UNet(in_channels=1, n_classes=4, img_size=192)
        head = GlobalHead(in_channels=128, spatial=6, mode="dense")
        encode = lambda x: model.encode(x)[-1]  # noqa: E731
        label = "glcl_core.models UNet.encode + GlobalHead(dense)"
    except ImportError:  # stand-in with the same encoder widths and head shape
        layers, c_in = [], 1
        for i, c in enumerate((16, 32, 64, 128, 128, 128)):
            if i:
                layers.append(torch.nn.MaxPool2d(2))
            for cin in (c_in, c):
                layers += [torch.nn.Conv2d(cin, c, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c),
                           torch.nn.ReLU(inplace=True)]
            c_in = c
        model = torch.nn.Sequential(*layers)
        head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(128 * 36, 1024), torch.nn.ReLU(),
                                   torch.nn.Linear(1024, 128))
        encode = model
        label = "STAND-IN conv net (glcl_core.models missing): 6 levels 16..128, dense head"
    model.to(device).train()
    head.to(device).train()
    x = torch.randn(48, 1, 192, 192, device=device)

    def run():
        z = head(encode(x))
        z.square().mean().backward()
        for p in list(model.parameters()) + list(head.parameters()):
            p.grad = None

    return run, label


def build(spec: dict, device: torch.device):
    if spec["kind"] == "global":
        return global_case(spec["n"], spec["strategy"], spec["impl"], device)
    if spec["kind"] == "local":
        return local_case(spec["pairs"], spec["form"], spec.get("grid"), spec["strategy"], spec["impl"], device)
    return step_case(device)[0]


def peak_memory(spec: dict, device: torch.device) -> float | None:
    if device.type == "cuda":
        return cuda_peak_mb(build(spec, device), device)
    out = run_child(MODULE, spec)
    if "error" in out:
        print(f"  [memory of {spec} failed: {out['error']}]", file=sys.stderr)
        return None
    return out["peak_mb"]


def child(payload: str) -> None:
    spec = json.loads(payload)
    torch.manual_seed(0)
    run = build(spec, torch.device("cpu"))
    print(json.dumps({"peak_mb": cpu_peak_delta_mb(run)}))


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------
def pct(loss_s: float, step_s: float) -> str:
    return f"{100 * loss_s / step_s:.2f}%"


def bench_device(device: torch.device, quick: bool, memory: bool, repeats: int) -> list[str]:
    verdicts = []
    print(f"\n## Device: {device}  (torch {torch.__version__}, {torch.get_num_threads()} threads)\n")

    # --- reference step
    step_run, label = step_case(device)
    step_s = time_call(step_run, device, repeats=1 if quick else 2, long_call=30)
    step_mem = peak_memory({"kind": "step"}, device) if memory else None
    del step_run
    print(f"Paper-size pre-training step ({label}):\n  2 views x 24 slices 192x192, fwd+bwd: "
          f"{fmt_seconds(step_s)}, peak {fmt_mb(step_mem)}\n")

    # --- global
    ns = (24, 48, 192, 512) if quick else (24, 48, 96, 192, 512)
    strategies = ("GR", "GD", "PCL")
    rows, gd48 = [], {}
    for n in ns:
        for strategy in strategies:
            spec = {"kind": "global", "n": n, "strategy": strategy, "impl": "vectorised"}
            t = time_call(build(spec, device), device, repeats)
            loop_t = None
            if n <= (48 if quick else 192):
                loop_t = time_call(build({**spec, "impl": "loop"}, device), device, 1 if n > 48 else repeats)
            mem = peak_memory(spec, device) if memory and (not quick or n == 512) else None
            if n == 48 and strategy == "GD":
                gd48 = {"vec": t, "loop": loop_t}
            rows.append([n, strategy, fmt_seconds(t), pct(t, step_s), fmt_seconds(loop_t),
                         f"{loop_t / t:.0f}x" if loop_t else "-", fmt_mb(mem)])
    print("Global loss (D=128, masks built inside, fwd+bwd)")
    print(format_table(["N", "strategy", "vectorised", "% step", "loop ref", "speed-up", "peak mem"], rows))
    worst_global = max(float(r[3].rstrip("%")) for r in rows if r[0] <= 48)
    verdicts.append(f"global loss (N<=48, paper batches) <= 1% of step: worst {worst_global:.2f}% -> "
                    f"{'MET' if worst_global <= 1 else 'NOT MET'}")
    if gd48.get("loop"):
        speed = gd48["loop"] / gd48["vec"]
        verdicts.append(f"kernel >= 50x faster than loop on G^D batch (48 emb.): {speed:.0f}x -> "
                        f"{'MET' if speed >= 50 else 'NOT MET'}")

    # --- local
    batches = (8, 24) if quick else (8, 16, 24, 32)
    forms = [("sparse", None), ("dense", 12), ("dense", 24), ("dense", 48)]
    rows = []
    sparse_worst, dense24_worst, dense48_24_mem = 0.0, 0.0, None
    for form, grid in forms:
        for pairs in batches:
            for strategy in ("LR", "LD"):
                spec = {"kind": "local", "pairs": pairs, "form": form, "grid": grid, "strategy": strategy,
                        "impl": "vectorised"}
                t = time_call(build(spec, device), device, repeats)
                loop_t = None
                if (form == "sparse" and (not quick or pairs == 8)) or (form, grid, pairs) == ("dense", 12, 8):
                    if not (quick and form == "dense"):
                        loop_t = time_call(build({**spec, "impl": "loop"}, device), device, 0)
                want_mem = memory and (not quick or form == "dense" and (grid == 48 or pairs == 24))
                mem = peak_memory(spec, device) if want_mem else None
                share = 100 * t / step_s
                if form == "sparse":
                    sparse_worst = max(sparse_worst, share if pairs == 24 else 0)
                if grid == 24 and pairs == 24:
                    dense24_worst = max(dense24_worst, share)
                if grid == 48 and pairs == 24 and mem is not None:
                    dense48_24_mem = max(dense48_24_mem or 0, mem)
                regions = 13 if form == "sparse" else grid * grid
                name = "sparse 13" if form == "sparse" else f"dense {grid}x{grid}"
                rows.append([name, regions, pairs, strategy, fmt_seconds(t), pct(t, step_s), fmt_seconds(loop_t),
                             f"{loop_t / t:.0f}x" if loop_t else "-", fmt_mb(mem)])
    print(f"\nLocal loss (C={MAP_CHANNELS}, {MAP_SIZE}x{MAP_SIZE} maps, flatten pooling, 2 views; "
          "masks built inside, fwd+bwd)")
    print(format_table(["form", "regions/map", "pairs", "strategy", "vectorised", "% step", "loop ref", "speed-up",
                        "peak mem"], rows))
    verdicts.append(f"sparse local (24 pairs) <= 5% of step: worst {sparse_worst:.2f}% -> "
                    f"{'MET' if sparse_worst <= 5 else 'NOT MET'}")
    verdicts.append(f"dense 24x24 grid (24 pairs) <= 25% of step: worst {dense24_worst:.1f}% -> "
                    f"{'MET' if dense24_worst <= 25 else 'NOT MET'}")
    if dense48_24_mem is not None:
        verdicts.append(f"dense 48x48 grid, 24 pairs <= 2 GB peak: {fmt_mb(dense48_24_mem)} -> "
                        f"{'MET' if dense48_24_mem <= 2048 else 'NOT MET'}")
    return verdicts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases, for a run of a couple of minutes")
    parser.add_argument("--device", default="all", help="cpu, cuda or all (default: cpu, plus cuda when present)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up (best reported)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d != "cuda" or torch.cuda.is_available()]
    print(f"# Contrastive loss benchmark ({'quick' if args.quick else 'full'}) on {platform.processor() or 'cpu'}, "
          f"python {platform.python_version()}")
    for d in devices:
        verdicts = bench_device(torch.device(d), args.quick, not args.no_memory, args.repeats)
        print(f"\nTargets on {d}:")
        for v in verdicts:
            print(f"  - {v}")


if __name__ == "__main__":
    main()
