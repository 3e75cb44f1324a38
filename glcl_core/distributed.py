"""Several processes, one global batch: rank helpers and collectives with exact gradients (``torch.distributed``).

Launched by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment), the training stages run
one process per GPU (NCCL) or per CPU worker (gloo). Every rank draws its own part of the global batch; the
embeddings and their metadata are gathered so that the masks and the contrastive loss are those of the global
batch, computed identically on every rank. Without torchrun every helper here is the identity (rank 0 of 1), so
single-process code needs no branch.

Why the gradients are exact. Each rank computes the same loss ``L`` of the gathered embeddings, so the ranks
together optimise ``sum_r L = W * L``. Every collective here has its exact adjoint as backward: the backward of
an all-gather sums the incoming gradients over the ranks (a reduce-scatter) and keeps the local slice; the
backward of an all-reduce (sum) is an all-reduce (sum). Rank ``r`` therefore ends with the parameter gradient of
``W * L`` through its own slice of the batch, the sum over ranks is ``W * dL/dtheta``, and DDP's average of the
ranks' gradients divides by ``W``: every rank holds exactly ``dL/dtheta`` of the single-process loss on the global
batch. The same holds for batch-norm statistics (:func:`convert_batchnorm`): they are those of the global batch,
with the same adjoint rule, so a model with batch norm sees what a single process would.
"""
from __future__ import annotations

import contextlib
import inspect
import os
from datetime import timedelta
from typing import Any, Callable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")

__all__ = [
    "init_distributed", "cleanup", "is_distributed", "is_main", "rank", "world_size", "local_rank", "barrier",
    "gather_with_grad", "all_reduce_with_grad", "mean_over_ranks", "gather_metadata", "broadcast_object",
    "all_gather_object", "run_on_main", "main_first", "convert_batchnorm", "GlobalBatchNorm2d", "wrap_ddp",
]

METADATA = ("image", "volume", "partition", "position")


# ------------------------------------------------------------------------------------------------- process group
def init_distributed(timeout_minutes: float = 30.0) -> bool:
    """Join the process group torchrun describes; True if this process is one of several.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and torchrun's ``MASTER_ADDR``/``MASTER_PORT``). Backend: NCCL
    when CUDA is present (each process takes GPU ``LOCAL_RANK``), else gloo. A no-op returning False when not
    launched by torchrun or with a single process; idempotent.
    """
    if is_distributed():
        return True
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    return True


def cleanup() -> None:
    """Leave the process group (no-op when there is none)."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main() -> bool:
    """Rank 0: the process that writes run folders, logs and CSV rows and prints."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


# ------------------------------------------------------------------------------------- collectives with gradients
def _all_gather(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Concatenation of every rank's ``x`` along dim 0 (sizes may differ), and the sizes."""
    x = x.contiguous()
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    counts = [torch.empty_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    sizes = [int(c) for c in counts]
    longest = max(sizes)
    if x.shape[0] < longest:  # all_gather needs equal shapes: pad, then cut
        x = torch.cat([x, x.new_zeros((longest - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    if all(s == longest for s in sizes):
        return torch.cat(parts), sizes
    return torch.cat([part[:s] for part, s in zip(parts, sizes)]), sizes


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        full, sizes = _all_gather(x)
        r = dist.get_rank()
        ctx.start, ctx.n = sum(sizes[:r]), sizes[r]
        return full

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # adjoint of the all-gather: sum the gradients every rank's loss sends to each slice, keep ours
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.narrow(0, ctx.start, ctx.n)


class _AllReduceWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = x.contiguous().clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated along dim 0 in rank order; ``x`` itself when not distributed.

    The local slice keeps its autograd graph; backward sums the gradients of all ranks' (identical) losses for
    each slice (see the module docstring for why DDP's averaging then gives the single-process gradient). The
    ranks' first dimensions may differ; the other dimensions must agree.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over the ranks, differentiable (backward: the summed gradient); ``x`` when not distributed."""
    if not is_distributed():
        return x
    return _AllReduceWithGrad.apply(x)


def mean_over_ranks(local_mean: torch.Tensor, count: int) -> torch.Tensor:
    """The mean over the global batch from each rank's mean over its ``count`` items, differentiable (as
    :func:`all_reduce_with_grad`); ``local_mean`` itself when not distributed."""
    if not is_distributed():
        return local_mean
    n = torch.tensor(float(count), dtype=local_mean.dtype, device=local_mean.device)
    totals = all_reduce_with_grad(torch.stack([local_mean * n, n]))
    return totals[0] / totals[1].detach()


@torch.no_grad()
def gather_metadata(batch: Any) -> dict[str, torch.Tensor]:
    """The global batch's ``image``, ``volume``, ``partition``, ``position`` (rank order, as
    :func:`gather_with_grad`), from a :class:`~glcl_core.batch.Batch` or a mapping; one collective.

    Image ids are global slice indices, so they stay unique across ranks. Dtypes are kept (``position`` stays
    float64, bit for bit, so PCL's threshold ties resolve as in a single process).
    """
    get = batch.get if isinstance(batch, dict) else (lambda k: getattr(batch, k))
    meta = {k: get(k) for k in METADATA}
    if not is_distributed():
        return meta
    present = [k for k in METADATA if meta[k] is not None]
    # float64 holds the int64 ids (< 2**53) and the float64 positions exactly; each field gets its own dtype back
    full, _ = _all_gather(torch.stack([meta[k].to(torch.float64) for k in present], dim=1))
    out = {k: None for k in METADATA}
    for i, k in enumerate(present):
        out[k] = full[:, i].to(meta[k].dtype)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (pickled; for small state such as a checkpoint or an error)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def run_on_main(fn: Callable[[], T]) -> T | None:
    """``fn()`` on rank 0 only; its exception, if any, is raised on every rank (so no rank waits forever).
    Returns ``fn()``'s result on rank 0 and None elsewhere."""
    if not is_distributed():
        return fn()
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except Exception as err:  # re-raised below, on every rank
            error = err
    error = broadcast_object(error)
    if error is not None:
        raise error
    return result


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. builds a data cache), then the other ranks run it."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


# ----------------------------------------------------------------------------------------- batch norm and DDP
class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the global batch on every device type.

    ``torch.nn.SyncBatchNorm`` does this on GPUs only; this version works with gloo on CPU (two all-reduces per
    layer and pass). Same parameters and buffers as ``BatchNorm2d`` (checkpoints are interchangeable); in eval
    mode, or outside a process group, it *is* ``BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = (0, 2, 3)
        xs = x.to(torch.promote_types(x.dtype, torch.float32))
        count = torch.tensor([x.numel() // x.shape[1]], dtype=xs.dtype, device=x.device)
        totals = all_reduce_with_grad(torch.cat([xs.sum(dims), count]))
        n = totals[-1].detach()
        mean = totals[:-1] / n
        centred = xs - mean[None, :, None, None]
        var = all_reduce_with_grad((centred * centred).sum(dims)) / n  # biased, as batch norm normalises
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1)) if float(n) > 1 else var
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` in ``module`` (in place) by a global-batch version: ``nn.SyncBatchNorm`` on
    CUDA, :class:`GlobalBatchNorm2d` elsewhere. Parameters and buffers are shared, not copied, so optimisers and
    state dicts built before stay valid. Returns ``module``."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            setattr(module, name, _global_bn(child))
        else:
            convert_batchnorm(child)
    return module


def _global_bn(bn: nn.BatchNorm2d) -> nn.Module:
    on_cuda = bn.weight.is_cuda if bn.weight is not None else (bn.running_mean is not None and bn.running_mean.is_cuda)
    klass = nn.SyncBatchNorm if on_cuda else GlobalBatchNorm2d
    new = klass(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias
    if bn.track_running_stats:
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new


def wrap_ddp(module: nn.Module) -> nn.Module:
    """Batch norm on the global batch (:func:`convert_batchnorm`), then ``DistributedDataParallel``; ``module``
    itself when not distributed. The module must already be on its device."""
    if not is_distributed():
        return module
    convert_batchnorm(module)
    device = next(module.parameters()).device
    ddp = nn.parallel.DistributedDataParallel
    # batch-norm statistics are global, hence equal on every rank: no buffer broadcast before each forward
    # (parameters and buffers are still copied from rank 0 once, at construction)
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
               else {"broadcast_buffers": False})
    return ddp(
        module,
        device_ids=[device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
        **no_sync,
    )
