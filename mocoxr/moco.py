"""MoCo v2 (He et al. 2020; Chen et al. 2020) for chest X-rays, the whole method in one module.

The pieces are small functions, each tested on its own; ``MoCo`` only wires them together:

- ``projection_head``: the MoCo v2 2-layer MLP (Linear-ReLU-Linear) on top of pooled features.
- ``update_momentum``: key encoder <- m * key encoder + (1 - m) * query encoder (buffers copied).
- ``moco_logits`` / ``moco_loss``: InfoNCE with the positive at index 0 and the queue as negatives.
- ``enqueue``: circular write of any number of keys into the (K, D) queue, wrapping around.
- shuffle-BN across processes and the key gathering come from ``mocoxr.distributed``
  (``batch_shuffle`` / ``batch_unshuffle`` / ``concat_all_gather``).

One training step (``MoCo.forward``)::

    q = normalize(head_q(encoder_q(im_q)))                      # gradients flow here only
    with no_grad: update_momentum(q-nets -> k-nets, m)
                  k = unshuffle(normalize(head_k(encoder_k(shuffle(im_k)))))
    loss = moco_loss(q, k, queue, T); enqueue(queue, all_gather(k))

**Shuffle-BN.** MoCo shuffles the key batch across GPUs so that the BatchNorm statistics of a
query and of its key come from different sub-batches (otherwise the model can "cheat": it finds
its positive key by the statistics it shares with the query, not by content; He et al. 2020,
sec. 3.3). Two mechanisms, one per set-up:

- *one process* (a laptop CPU, one GPU: the paper's own set-up): ``bn_splits = G > 1`` makes
  every BatchNorm of both encoders normalise in training over G contiguous groups of the batch
  (``SplitBatchNorm2d``, as in facebookresearch/moco's CIFAR demo), and ``split_shuffle`` /
  ``split_unshuffle`` permute the key batch before its encoder and restore its order after, so a
  key sits in a different group of images than its query. Running statistics are the mean of
  the groups' (what G devices would each hold), and eval mode is ordinary BatchNorm; the
  parameters and buffers are BatchNorm2d's, so exported backbones stay plain torchvision.
  ``bn_splits = 1`` is ordinary BatchNorm over the whole batch (the shortcut stays open).
- *several processes* (``torchrun``): ``distributed.batch_shuffle`` all-gathers the key
  images, applies one permutation broadcast from rank 0, and hands each rank a different slice;
  ``batch_unshuffle`` undoes it (per-rank batch sizes may differ). In one process it is an identity. ``bn_splits``
  then also splits each rank's share.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import models
from .distributed import batch_shuffle, batch_unshuffle, concat_all_gather

__all__ = [
    "MOCO_DEFAULTS",
    "QUEUE_SIZE_MOCO_CXR",
    "projection_head",
    "update_momentum",
    "moco_logits",
    "moco_loss",
    "init_queue",
    "enqueue",
    "SplitBatchNorm2d",
    "split_batchnorm",
    "split_shuffle",
    "split_unshuffle",
    "MoCo",
]

QUEUE_SIZE_MOCO_CXR = 24576  # MoCo-CXR main_moco.py --moco-k default ("fix size of our dataset");
# r8w1n416.sh keeps it (facebookresearch/moco: 65536)

MOCO_DEFAULTS: dict = {
    # Sowrirajan et al., MIDL 2021 (MoCo-CXR), pretraining setup, as also run by its reference
    # script stanfordmlgroup/MoCo-CXR scripts/training_scripts/r8w1n416.sh:
    "optimizer": "adam",
    "lr": 1e-4,  # Adam, learning rate 1e-4 (--lr 0.0001)
    "batch_size": 16,  # --batch-size 16
    "epochs": 20,  # --epochs 20
    "init": "imagenet",  # pretraining starts from ImageNet weights (--from-imagenet)
    "temperature": 0.2,  # --moco-t 0.2 (MoCo v2's value too)
    "mlp": True,  # MoCo v2 head (--mlp)
    # MoCo-CXR main_moco.py argparse defaults (not overridden by the script):
    "weight_decay": 1e-4,  # --wd 1e-4, passed to Adam
    "momentum": 0.999,  # --moco-m 0.999 (= facebookresearch/moco)
    "dim": 128,  # --moco-dim 128 (= facebookresearch/moco)
    "queue_size": 65536,  # facebookresearch/moco --moco-k 65536 (MoCo-CXR's own: below)
    "queue_size_moco_cxr": QUEUE_SIZE_MOCO_CXR,
    "mlp_hidden": None,  # builder.py: hidden width = backbone feature width (2048 ResNet-50, 512 ResNet-18)
}


def projection_head(in_dim: int, hidden_dim: int, out_dim: int = 128) -> nn.Sequential:
    """MoCo v2 projection head: Linear(in, hidden) - ReLU - Linear(hidden, out)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))


@torch.no_grad()
def update_momentum(model: nn.Module, model_ema: nn.Module, m: float) -> None:
    """In place: ``p_ema <- m * p_ema + (1 - m) * p`` for every parameter; buffers are copied.

    ``m = 0`` copies ``model``, ``m = 1`` leaves ``model_ema`` unchanged. The two modules must have
    the same structure.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum m must be in [0, 1], got {m}")
    params = dict(model.named_parameters())
    ema = dict(model_ema.named_parameters())
    if params.keys() != ema.keys() or any(params[k].shape != ema[k].shape for k in params):
        raise ValueError("update_momentum: model and model_ema have different parameters")
    keys = list(params)
    if keys:
        ema_t = [ema[k].data for k in keys]
        torch._foreach_mul_(ema_t, m)
        torch._foreach_add_(ema_t, [params[k].data for k in keys], alpha=1.0 - m)
    buffers = dict(model.named_buffers())
    for name, b_ema in model_ema.named_buffers():
        if name not in buffers:
            raise ValueError(f"update_momentum: buffer {name!r} missing from model")
        b_ema.copy_(buffers[name])


def moco_logits(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Logits (B, 1 + K): column 0 is ``q . k+ / T``, columns 1.. are ``q . queue_j / T``.

    ``query`` and ``key`` are (B, D), ``queue`` is (K, D), all L2-normalised by the caller.
    """
    if query.ndim != 2 or key.shape != query.shape:
        raise ValueError(f"query and key must both be (B, D), got {tuple(query.shape)} and {tuple(key.shape)}")
    if queue.ndim != 2 or queue.shape[1] != query.shape[1]:
        raise ValueError(f"queue must be (K, {query.shape[1]}), got {tuple(queue.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    pos = (query * key).sum(dim=1, keepdim=True)
    neg = query @ queue.t()
    return torch.cat([pos, neg], dim=1) / temperature


def moco_loss(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """InfoNCE (mean over the batch): cross-entropy of ``moco_logits`` with the positive at index 0.

    ``-log( exp(q.k+/T) / (exp(q.k+/T) + sum_j exp(q.queue_j/T)) )``. Pure: nothing is updated.
    """
    logits = moco_logits(query, key, queue, temperature)
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def init_queue(queue_size: int, dim: int, seed: int = 0) -> torch.Tensor:
    """A (K, D) queue of random unit vectors (seeded), as the reference code starts with."""
    if queue_size < 1 or dim < 1:
        raise ValueError(f"queue_size and dim must be >= 1, got {queue_size}, {dim}")
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(queue_size, dim, generator=g), dim=1)


def _enqueue_(queue: torch.Tensor, ptr, keys: torch.Tensor) -> None:
    """Write ``keys`` at rows ptr, ptr+1, ... (mod K); with more than K keys only the last K stay."""
    k_size = queue.shape[0]
    if keys.ndim != 2 or keys.shape[1] != queue.shape[1]:
        raise ValueError(f"keys must be (N, {queue.shape[1]}), got {tuple(keys.shape)}")
    n = keys.shape[0]
    if n == 0:
        return
    idx = (ptr + torch.arange(n, device=queue.device)) % k_size
    if n > k_size:  # later keys overwrite earlier ones: keep the last K, in their circular slots
        idx, keys = idx[-k_size:], keys[-k_size:]
    queue.index_copy_(0, idx, keys.detach().to(queue.dtype))


@torch.no_grad()
def enqueue(queue: torch.Tensor, ptr: int, keys: torch.Tensor) -> int:
    """Circular write of any number of keys into ``queue`` (K, D) in place; returns the new pointer.

    Key i goes to row ``(ptr + i) % K``: batches of any size, including a short last batch or one
    larger than K, never drop a slot or break the order; the oldest keys are overwritten first.
    """
    k_size = queue.shape[0]
    if not 0 <= int(ptr) < k_size:
        raise ValueError(f"ptr must be in [0, {k_size}), got {ptr}")
    _enqueue_(queue, int(ptr), keys)
    return (int(ptr) + keys.shape[0]) % k_size


# --- shuffle-BN in one process: BatchNorm over groups of the batch ----------------------------


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises each of ``num_splits`` contiguous groups of the
    batch with that group's own statistics (G simulated devices); eval mode is BatchNorm2d.

    The running statistics become the mean over groups of what each group's update gives, so
    ``running_mean`` equals ordinary BatchNorm's for equal groups and ``running_var`` is the mean
    of the groups' unbiased variances. Same parameters and buffers as BatchNorm2d, so a state
    dict is interchangeable with torchvision's.
    """

    def __init__(self, num_features: int, num_splits: int = 1, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.num_splits = int(num_splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        if x.shape[0] < 2 * self.num_splits:
            raise ValueError(f"SplitBatchNorm2d: a batch of {x.shape[0]} cannot be split into "
                             f"{self.num_splits} groups of at least 2 images")
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as BatchNorm2d does
                momentum = 1.0 / float(self.num_batches_tracked)
        means, variances, outs = [], [], []
        for chunk in x.chunk(self.num_splits):
            rm = self.running_mean.clone() if self.track_running_stats else None
            rv = self.running_var.clone() if self.track_running_stats else None
            outs.append(F.batch_norm(chunk, rm, rv, self.weight, self.bias, True, momentum, self.eps))
            means.append(rm)
            variances.append(rv)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(torch.stack(means).mean(0))
                self.running_var.copy_(torch.stack(variances).mean(0))
        return torch.cat(outs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"


def split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` (in place) by a ``SplitBatchNorm2d``
    with the same parameters and buffers; returns ``module``. ``num_splits = 1`` changes nothing."""
    if num_splits < 1:
        raise ValueError(f"bn_splits must be >= 1, got {num_splits}")
    if num_splits == 1:
        return module
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = SplitBatchNorm2d(child.num_features, num_splits, eps=child.eps,
                                   momentum=child.momentum, affine=child.affine,
                                   track_running_stats=child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(device=child.weight.device if child.affine else None)
            setattr(module, name, new)
        else:
            split_batchnorm(child, num_splits)
    return module


def split_shuffle(x: torch.Tensor, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle-BN in one process, step 1: ``(x[perm], inverse perm)`` with ``perm`` a random
    permutation of the batch (drawn on the CPU from ``generator`` or the global RNG), so each
    key's BatchNorm group holds other images than its query's."""
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    return x[perm], torch.argsort(perm)


def split_unshuffle(x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
    """Shuffle-BN in one process, step 2: rows back in the original batch order."""
    return x[idx_unshuffle]


# --- the model ------------------------------------------------------------------------------------


class MoCo(nn.Module):
    """MoCo v2 on a torchvision backbone: query/key encoders, projection heads, queue of keys.

    ``encoder_q`` is the torchvision model with its classifier replaced by Identity (so its
    ``state_dict`` keys are torchvision's); ``head_q`` the projection head. ``encoder_k``/``head_k``
    are momentum copies that never receive gradients. Buffers: ``queue`` (K, dim) of L2-normalised
    keys, ``queue_ptr`` (the next row to overwrite). ``hidden_dim`` of the MLP defaults to the
    backbone's feature width, as in facebookresearch/moco (2048 for ResNet-50, 512 for ResNet-18).

    In ``train()`` mode ``forward`` updates the key encoder and the queue; in ``eval()`` mode it
    only computes (loss, logits), leaving both untouched (e.g. for a validation loss).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        init: str | Path = "random",
        dim: int = MOCO_DEFAULTS["dim"],
        queue_size: int = MOCO_DEFAULTS["queue_size"],
        momentum: float = MOCO_DEFAULTS["momentum"],
        temperature: float = MOCO_DEFAULTS["temperature"],
        mlp: bool = True,
        seed: int = 0,
        hidden_dim: int | None = None,
        bn_splits: int = 1,
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.backbone_name = backbone
        self.momentum = float(momentum)
        self.temperature = float(temperature)
        self.bn_splits = int(bn_splits)
        net = split_batchnorm(models.create_backbone(backbone, init=init, seed=seed), self.bn_splits)
        feat = models.feature_dim(net)
        setattr(net, models.head_name(net), nn.Identity())
        self.encoder_q = net
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            if mlp:
                self.head_q = projection_head(feat, hidden_dim or feat, dim)
            else:  # MoCo v1: one linear layer
                self.head_q = nn.Sequential(nn.Linear(feat, dim))
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.head_k = copy.deepcopy(self.head_q)
        for p in list(self.encoder_k.parameters()) + list(self.head_k.parameters()):
            p.requires_grad_(False)
        self.register_buffer("queue", init_queue(queue_size, dim, seed))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """Key encoder and head <- EMA of the query ones (``self.momentum``)."""
        update_momentum(self.encoder_q, self.encoder_k, self.momentum)
        update_momentum(self.head_q, self.head_k, self.momentum)

    @torch.no_grad()
    def keys(self, im_k: torch.Tensor) -> torch.Tensor:
        """L2-normalised keys of ``im_k`` from the key encoder, with shuffle-BN: across ranks
        when distributed, across the ``bn_splits`` BatchNorm groups when those are > 1."""
        x, idx_unshuffle = batch_shuffle(im_k)
        if self.bn_splits > 1 and self.training:
            x, idx_split = split_shuffle(x)
        k = F.normalize(self.head_k(self.encoder_k(x)), dim=1)
        if self.bn_splits > 1 and self.training:
            k = split_unshuffle(k, idx_split)
        return batch_unshuffle(k, idx_unshuffle)

    @torch.no_grad()
    def enqueue_keys(self, k: torch.Tensor) -> None:
        """Enqueue this step's keys from every rank (so all ranks keep the same queue)."""
        k = concat_all_gather(k)
        _enqueue_(self.queue, self.queue_ptr, k)  # pointer stays on device: no host sync
        self.queue_ptr.copy_((self.queue_ptr + k.shape[0]) % self.queue.shape[0])

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views (B,3,H,W) of the same images -> (InfoNCE loss, detached fp32 logits (B, 1 + K)).

        Logit column 0 is the positive; the negatives are the queue as it was *before* this step.
        """
        q = F.normalize(self.head_q(self.encoder_q(im_q)), dim=1)
        if self.training:
            self.momentum_update()
        k = self.keys(im_k)
        # clone: the queue is updated in place below, but backward still needs this version.
        # fp32 even under autocast: with T = 0.2, bf16 logits would be off by a few hundredths.
        with torch.autocast(device_type=q.device.type, enabled=False):
            logits = moco_logits(q.float(), k.float(), self.queue.clone().detach().float(), self.temperature)
        loss = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))
        if self.training:
            self.enqueue_keys(k)
        return loss, logits.detach()

    def export_backbone(self, path: str | Path) -> Path:
        """Write the query encoder as a plain torchvision state dict (see ``models.export_backbone``)."""
        return models.export_backbone(self.encoder_q, path)
