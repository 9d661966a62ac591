"""Data-parallel training under torchrun: every process trains its share of each global batch.

`torchrun --nproc-per-node N bnnflow train ...` (or several nodes with --nnodes/--rdzv-endpoint) starts
N processes; each joins a torch.distributed group (gloo on the CPU, nccl on GPUs, one GPU per
process). --batch-size stays the global batch: every rank draws the same shuffle and augmentation
(the (seed, epoch) generator), augments the whole batch and trains on its contiguous 1/N of it, so
the run equals the single-process run with the same batch and seed up to floating-point summation
order:

* gradients are averaged over the ranks by DistributedDataParallel before the optimiser step;
* batch norm in training mode normalises with the statistics of the whole global batch (the
  per-rank sums all-reduced differentiably, as torch's SyncBatchNorm does, which runs on GPUs only);
* while Brevitas' activation scales collect their per-batch statistics (the engine's first steps),
  every rank runs the whole batch, so those statistics are the single-process ones.

Only rank 0 writes the run folder and prints; last.pt and best.pt are the single-process formats.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch
from torch import nn

from bnnflow.errors import BnnflowError

_sharded = False  # True while a forward runs on one rank's share of the batch


def launched() -> bool:
    """Started by torchrun with more than one process?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class DataParallel:
    """The process group of this torchrun job and the data-parallel step."""

    def __init__(self, device_name: str):
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = device_name in ("cuda", "auto") and torch.cuda.is_available()
        if device_name == "cuda" and not cuda:
            raise BnnflowError("--device cuda was asked for but PyTorch sees no CUDA GPU: use --device cpu or auto.")
        self.device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        dist.init_process_group("nccl" if cuda else "gloo")
        self.ddp = None
        # its suggested replacement (torch.distributed._functional_collectives) is private API
        warnings.filterwarnings("ignore", message="torch.distributed.nn.functional.all_reduce is deprecated")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, obj):
        """rank 0's object on every rank (the opened run: recipe, folder, last.pt)."""
        box = [obj if self.main else None]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        self.dist.barrier()
        self.dist.destroy_process_group()

    def step(self, engine, xb: torch.Tensor, yb: torch.Tensor, soft: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """engine.step on the whole global batch `xb`: (its mean loss, its logits), computed on this rank's share."""
        global _sharded
        n = len(xb)
        if n % self.world:
            raise BnnflowError(f"A batch of {n} images does not split evenly over {self.world} processes: pass a "
                               f"--batch-size (and --subset) divisible by {self.world}.")
        if not engine.uses_twin() and _stats_pending(engine.net):
            return engine.local_step(xb, yb, soft)  # per-batch statistics: the whole batch on every rank
        if self.ddp is None:  # after any state_dict load (Brevitas rebuilds scale Parameters on load)
            _globalise_batch_norm(engine.net)
            # buffers (batch-norm statistics) stay equal on every rank: no need to send them each step
            self.ddp = nn.parallel.DistributedDataParallel(_Forward(engine), forward_sync_buffers=False,
                                                           find_unused_parameters=True)
        lo, hi = self.rank * n // self.world, (self.rank + 1) * n // self.world
        _sharded = True
        try:
            logits, scaled = self.ddp(xb[lo:hi])
        finally:
            _sharded = False
        loss = engine.loss(scaled, yb[lo:hi], soft[lo:hi] if soft is not None else None)
        for opt in engine.opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over the ranks here
        for opt in engine.opts:
            opt.step()
        total = loss.detach() * (hi - lo)
        self.dist.all_reduce(total)
        parts = [torch.empty_like(logits) for _ in range(self.world)]
        self.dist.all_gather(parts, logits.detach().contiguous())
        return total / n, torch.cat(parts)


def _stats_pending(net) -> bool:
    from .fast import stats_pending

    return stats_pending(net)


class _Forward(nn.Module):
    """What DistributedDataParallel wraps: the engine's forward and every trained Parameter; the logit
    temperature (outside the network) is applied here, as DDP expects each Parameter used in its forward."""

    def __init__(self, engine):
        super().__init__()
        self.net, self.logit_scale, self._engine = engine.net, engine.logit_scale, [engine]

    def forward(self, xb):
        logits = self._engine[0].forward(xb)
        return logits, logits * self.logit_scale.exp()


class _GlobalBatchNorm:
    """Mixed into a model's BatchNorm modules under torchrun: the same Parameters, buffers and state_dict
    keys, but a sharded training forward normalises with the whole global batch's mean and variance."""

    def forward(self, x):
        if not (self.training and _sharded):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # differentiable: gradients cross ranks too

        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = all_reduce(x.new_tensor(float(x.numel() // x.shape[1])))
        mean = all_reduce(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / count  # biased, as batch norm normalises
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1), alpha=m)
                self.num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


_GLOBAL_CLASSES: dict[type, type] = {}


def _globalise_batch_norm(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, _GlobalBatchNorm):
            cls = type(m)
            if cls not in _GLOBAL_CLASSES:
                _GLOBAL_CLASSES[cls] = type(f"Global{cls.__name__}", (_GlobalBatchNorm, cls), {})
            m.__class__ = _GLOBAL_CLASSES[cls]


@contextlib.contextmanager
def maybe_parallel(device_name: str):
    """A DataParallel when torchrun started this process as one of several, else None."""
    if not launched():
        yield None
        return
    parallel = DataParallel(device_name)
    try:
        yield parallel
    finally:
        parallel.close()
