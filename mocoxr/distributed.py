"""All of torch.distributed in one place: what a run on several processes (``torchrun``) needs.

- ``is_distributed`` / ``dist_info``: whether a group of more than one process is initialised,
  and this process's ``(rank, world_size)``.
- ``rank_slice``: this rank's contiguous share of a global batch.
- ``concat_all_gather``, ``batch_shuffle`` / ``batch_unshuffle``: the keys gathered into every
  rank's queue, and shuffle-BN across processes (``moco.MoCo.keys``): the key images are
  all-gathered, permuted with one permutation broadcast from rank 0, and each rank gets a
  different slice; ``batch_unshuffle`` undoes it (per-rank batch sizes may differ).
- ``wrap_ddp`` and ``distributed_loss``: DistributedDataParallel and the loss scaling that makes
  its averaged gradient the gradient of the global-batch mean.

In a single process every helper is an identity (``dist_info() == (0, 1)``), so the training
code calls them unconditionally. The command-line launcher is ``mocoxr.torchrun_pretrain``.
"""

from __future__ import annotations

import inspect

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["is_distributed", "dist_info", "rank_slice", "concat_all_gather", "batch_shuffle",
           "batch_unshuffle", "wrap_ddp", "distributed_loss", "barrier"]


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised torch.distributed group; ``(0, 1)`` otherwise."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if is_distributed():
        dist.barrier()


def rank_slice(n: int, rank: int, world: int) -> slice:
    """This rank's contiguous share of a global batch of ``n`` (shares differ by at most one)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world) with world >= 1, got rank={rank}, world={world}")
    base, extra = divmod(int(n), world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def _gather_varlen(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """all_gather along dim 0 allowing a different length on each rank; returns (concat, lengths)."""
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes_t = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes_t, n)
    sizes = [int(s.item()) for s in sizes_t]
    n_max = max(sizes)
    if x.shape[0] < n_max:
        x = torch.cat([x, x.new_zeros((n_max - x.shape[0], *x.shape[1:]))])
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]), sizes


@torch.no_grad()
def concat_all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, in rank order (no gradient).

    Ranks may hold different numbers of rows. Returns ``x`` itself outside distributed runs.
    """
    if not is_distributed():
        return x
    return _gather_varlen(x)[0]


@torch.no_grad()
def batch_shuffle(
    x: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shuffle-BN, step 1: give this rank a random slice of the global batch.

    Gathers ``x`` from all ranks, permutes the global batch with one permutation drawn on rank 0
    (from ``generator`` or the global RNG) and broadcast, and returns this rank's slice (same size
    as its input) plus the inverse permutation for :func:`batch_unshuffle`. In a single process it
    returns ``(x, None)``: BatchNorm sees the whole batch either way, so shuffling would be a no-op.
    """
    if not is_distributed():
        return x, None
    x_all, sizes = _gather_varlen(x)
    perm = torch.randperm(x_all.shape[0], generator=generator).to(x.device)
    dist.broadcast(perm, src=0)
    rank = dist.get_rank()
    start = sum(sizes[:rank])
    return x_all[perm[start : start + sizes[rank]]], torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, idx_unshuffle: torch.Tensor | None) -> torch.Tensor:
    """Shuffle-BN, step 2: return to each rank the outputs of its own original samples, in order."""
    if idx_unshuffle is None:
        return x
    x_all, sizes = _gather_varlen(x)
    rank = dist.get_rank()
    start = sum(sizes[:rank])
    return x_all[idx_unshuffle[start : start + sizes[rank]]]


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when distributed (else ``model`` itself).

    Only the query encoder and head have gradients, so only they are all-reduced. Buffers are
    not broadcast at every forward (``broadcast_buffers=False``): the queue is kept identical on
    every rank by construction (all ranks enqueue the same gathered keys) and broadcasting it
    each step would only cost bandwidth; BatchNorm running statistics stay per rank (training
    uses batch statistics; rank 0's are the ones saved, as in facebookresearch/moco). DDP's
    constructor broadcasts rank 0's parameters and buffers once, so all ranks start equal.
    """
    if not is_distributed():
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    # torch >= 2.14 renames broadcast_buffers=False to forward_sync_buffers=False (both still
    # sync at construction); older versions only know the first
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)
    return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def distributed_loss(loss: torch.Tensor, local_batch: int,
                     global_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss to backpropagate, detached global-batch mean loss)`` of one step.

    DDP averages gradients over ranks; scaling the rank's mean loss by ``local_batch * world /
    global_batch`` makes that average the gradient of the mean over the *global* batch, also
    when the ranks' shares differ. The global mean is all-reduced for the log. Identity in a
    single process.
    """
    if not is_distributed():
        return loss, loss.detach()
    w = local_batch / global_batch
    mean = loss.detach() * w
    dist.all_reduce(mean)
    return loss * (w * dist.get_world_size()), mean
