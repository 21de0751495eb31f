"""MoCo v2 pretraining in plain sight: the config, the schedule, one step, and the loop.

The style follows lightly's MoCo example: the step is written out (:func:`pretrain_step`), the
loop (:func:`pretrain`) is small functions around it, there is no trainer class. Every random
draw is a pure function of ``(seed, step)`` (data order of an epoch, the augmentation generator
of a step, the global torch seed of a step), so a run that is killed and resumed from its last
checkpoint ends with exactly the weights of a run that never stopped (on CPU, or on GPU with
deterministic kernels). What the run writes in its ``out_dir`` (checkpoint, loss log, backbone,
model card) is described in ``mocoxr.checkpoint``.

**Distributed.** :func:`pretrain` also runs under ``torchrun`` (``mocoxr.torchrun_pretrain``):
when ``torch.distributed`` is initialised with more than one process, ``cfg.batch_size`` is the
*global* batch, each rank takes its contiguous slice (``distributed.rank_slice``) of every global
batch of the seeded epoch order, the MoCo model is wrapped in DistributedDataParallel
(``distributed.wrap_ddp``; shuffle-BN and the key gathering live in ``moco.MoCo``), the loss is
scaled so the averaged gradient is the gradient of the global-batch mean
(``distributed.distributed_loss``), and rank 0 alone writes the checkpoint, the log and the
backbone. Checkpoints hold the global step and the global batch (in ``config``), so a run
resumes on any number of processes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.profiler import record_function
from tqdm.auto import tqdm

from mocoxr import augment, checkpoint, distributed, moco, runtime
from mocoxr import pairs as pairing


@dataclass
class PretrainConfig:
    """MoCo v2 pretraining settings. Defaults are the paper's (Sowrirajan et al. 2021, sec. 3)
    and its reference code (stanfordmlgroup/MoCo-CXR, ``moco_pretraining/moco/main_moco.py`` and
    ``scripts/training_scripts/r8w1n416.sh``) unless said otherwise."""

    backbone: str = "resnet18"        # paper: ResNet18 and DenseNet121 (r8w1n416.sh: -a resnet18)
    init: str = "imagenet"            # paper: start from ImageNet weights (--from-imagenet)
    image_size: int = 320             # paper: 320 px inputs (--img-size 320 --crop 320)
    batch_size: int = 16              # paper: batch 16 (--batch-size 16)
    epochs: int = 20                  # paper: 20 epochs (--epochs 20)
    max_steps: int | None = None      # ours: cap on optimizer steps (CPU budgets); None = no cap
    lr: float = 1e-4                  # paper: Adam, learning rate 1e-4 (--optimizer adam --lr 1e-4)
    weight_decay: float = 1e-4        # reference: --wd default 1e-4, passed to Adam
    lr_drops: tuple[float, ...] = (0.6, 0.9)  # reference: lr x0.1 at epochs 12 and 18 of 20
                                      # (--schedule default); here as fractions of all steps
    queue_size: int = moco.QUEUE_SIZE_MOCO_CXR  # reference: MoCo-CXR --moco-k default 24576
    momentum: float = 0.999           # reference: --moco-m 0.999
    temperature: float = 0.2          # paper / r8w1n416.sh: --moco-t 0.2
    dim: int = 128                    # reference: --moco-dim 128
    mlp: bool = True                  # paper: MoCo v2 MLP head (--mlp)
    bn_splits: int = 1                # ours: shuffle-BN in one process: BatchNorm over this many
                                      # groups of the batch, key batch shuffled across them
                                      # (moco.SplitBatchNorm2d); 1 = ordinary BatchNorm
    seed: int = 0                     # ours: every random draw derives from (seed, step)
    device: str = runtime.DEFAULT_DEVICE  # ours: "auto" = cuda when available, else cpu
    augment: dict = field(default_factory=dict)  # overrides of augment.AugmentConfig fields
                                      # (out_size is always image_size); JSON-able values only
    positive_pairs: str = "image"     # paper: "image" (both views from one image); MedAug (Vu
                                      # et al. 2021): "same_study"/"same_patient", the key from
                                      # another image of the study/patient (mocoxr.pairs)
    pair_laterals: bool = False       # MedAug: lateral views may be the key of a frontal query
    monitor_every: int = 0            # ours: run the monitor every N steps (it always runs
                                      # before training and at the end; 0 = only then)
    checkpoint_every_steps: int | None = None  # ours: extra checkpoints inside an epoch
    amp: str = "auto"                 # ours: "auto" (bf16 where CUDA / AMX), "bf16", "off"
    channels_last: str = "auto"       # ours: "auto" (on for CUDA and CPU), "on", "off"; on the
                                      # 2-core AVX2 CPU a ResNet18 step at 64 px took 0.64 s
                                      # channels_last against 0.84-0.92 s without
    compile: bool = False             # ours: torch.compile the two encoders (nn.Module.compile)
    compile_backend: str = "inductor"  # ours: torch.compile backend ("aot_eager": quick, for tests)


# ----------------------------------------------------------------------------- the schedule


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of non-negative integers (e.g. seed, step)."""
    if any(int(p) < 0 for p in parts):
        raise ValueError(f"seeds and steps must be non-negative integers, got {parts}")
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled positions 0..n-1 of one epoch (a pure function of seed and epoch)."""
    return np.random.default_rng([int(seed), int(epoch), 7]).permutation(n)


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """Full batches per epoch (the last, short batch is dropped, as in the reference loader)."""
    return n_rows // batch_size


def total_steps(cfg: PretrainConfig, n_rows: int) -> int:
    """Optimizer steps of a whole run: epochs x steps per epoch, capped by ``max_steps``."""
    total = cfg.epochs * steps_per_epoch(n_rows, cfg.batch_size)
    return total if cfg.max_steps is None else min(total, int(cfg.max_steps))


def lr_at(cfg: PretrainConfig, step: int, total: int) -> float:
    """Learning rate of 0-based ``step``: ``cfg.lr`` times 0.1 per passed ``lr_drops`` fraction."""
    return cfg.lr * 0.1 ** sum(step >= round(f * total) for f in cfg.lr_drops)


# ----------------------------------------------------------------------------- one step


def make_model(cfg: PretrainConfig, device: torch.device) -> tuple[moco.MoCo, torch.optim.Adam]:
    """The seeded MoCo model of ``cfg`` on ``device`` (channels-last as configured) and its Adam."""
    model = moco.MoCo(backbone=cfg.backbone, init=cfg.init, dim=cfg.dim,
                      queue_size=cfg.queue_size, momentum=cfg.momentum,
                      temperature=cfg.temperature, mlp=cfg.mlp, seed=cfg.seed,
                      bn_splits=cfg.bn_splits)
    model = model.to(device)
    if runtime.use_channels_last(cfg.channels_last, device):
        model = model.to(memory_format=torch.channels_last)
    optimizer = runtime.adam([p for p in model.parameters() if p.requires_grad], cfg.lr,
                             cfg.weight_decay, device)
    return model, optimizer


def pretrain_step(net: nn.Module, optimizer: torch.optim.Optimizer, cfg: PretrainConfig,
                  step: int, lr: float, x: torch.Tensor, xk: torch.Tensor, mean: float,
                  std: float) -> torch.Tensor:
    """One MoCo v2 step on uint8 images ``x`` (queries) and ``xk`` (keys: ``x`` itself, or
    MedAug partner images), both (B, H, W) on the model's device; returns the detached
    (global-batch) mean loss. ``net``: a ``moco.MoCo`` (or it in DDP) in train mode."""
    rank, world = distributed.dist_info()
    # every random draw of this step derives from (seed, step); augmentation parameters come
    # from a CPU generator on every device (no host sync; in a distributed run each rank draws
    # its own)
    torch.manual_seed(derive_seed(cfg.seed, step, 1))
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, step, 2) if world == 1
                                        else derive_seed(cfg.seed, step, 2, rank))
    aug = augment.AugmentConfig(out_size=cfg.image_size, **cfg.augment)
    with torch.no_grad(), record_function("mocoxr.augment"):  # two views
        im_q = augment.to_model_input(augment.augment_batch(x, aug, gen), mean, std)
        im_k = augment.to_model_input(augment.augment_batch(xk, aug, gen), mean, std)
        if runtime.use_channels_last(cfg.channels_last, x.device):
            im_q = im_q.contiguous(memory_format=torch.channels_last)
            im_k = im_k.contiguous(memory_format=torch.channels_last)
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(x.device.type, dtype=torch.bfloat16,
                        enabled=runtime.use_amp(cfg.amp, x.device)), record_function("mocoxr.forward"):
        # moco.MoCo.forward: query forward, momentum update of the key encoder, key forward
        # (shuffle-BN), InfoNCE loss against the queue, enqueue of the new keys
        loss, _ = net(im_q, im_k)
    loss, mean_loss = distributed.distributed_loss(loss, x.shape[0], cfg.batch_size)
    optimizer.zero_grad(set_to_none=True)
    with record_function("mocoxr.backward"):
        loss.backward()
    with record_function("mocoxr.optimizer"):
        optimizer.step()
    return mean_loss


# ----------------------------------------------------------------------------- the loop


@dataclass
class _Run:
    """What the loop's small functions share: the inputs, the model and the log so far."""

    cfg: PretrainConfig
    images: np.ndarray
    rows: np.ndarray
    mean: float
    std: float
    files: dict[str, Path]
    sampler: pairing.PairSampler | None
    pairs_sha1: str | None
    rank: int = 0
    world: int = 1
    spe: int = 1                      # steps per epoch
    total: int = 0                    # steps of the whole run
    device: torch.device | None = None  # runtime.resolve_device(cfg.device), set by _build
    model: Any = None                 # the moco.MoCo model
    net: Any = None                   # the module that runs the step (model, or it in DDP)
    optimizer: Any = None
    monitor: Callable[[nn.Module], dict] | None = None
    log: list[dict] = field(default_factory=list)
    step: int = 0
    saved_step: int = -1
    pending: list = field(default_factory=list)  # (log row, loss tensor), read back lazily
    bar: Any = None
    order: tuple[int, Any] = (-1, None)  # (epoch, its order), the last one drawn


def _check_inputs(cfg: PretrainConfig, n_rows: int, world: int) -> None:
    if cfg.batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (batch norm), got {cfg.batch_size}")
    if n_rows < cfg.batch_size:
        raise ValueError(f"{n_rows} training rows is fewer than one batch of {cfg.batch_size}")
    if cfg.batch_size // world < 2:
        raise ValueError(f"batch_size {cfg.batch_size} is the global batch: split over {world} "
                         "processes it leaves fewer than 2 images per process (batch norm)")
    if cfg.bn_splits < 1 or cfg.batch_size // world < 2 * cfg.bn_splits:
        raise ValueError(f"bn_splits must be >= 1 and leave at least 2 images per BatchNorm group: "
                         f"batch_size {cfg.batch_size} over {world} process(es) and bn_splits "
                         f"{cfg.bn_splits} do not")
    if cfg.seed < 0 or cfg.epochs < 1 or (cfg.max_steps is not None and cfg.max_steps < 1):
        raise ValueError("seed must be >= 0, epochs >= 1 and max_steps None or >= 1, got "
                         f"seed={cfg.seed}, epochs={cfg.epochs}, max_steps={cfg.max_steps}")


def _build(run: _Run, ckpt: dict | None) -> None:
    """Model, optimizer and log of ``run``: fresh, or restored from ``ckpt``."""
    device = runtime.resolve_device(run.cfg.device)
    if device.type == "cuda" and device.index is None and run.world > 1:
        device = torch.device("cuda", torch.cuda.current_device())  # torchrun: set by the launcher
    run.device = device
    run.model, run.optimizer = make_model(run.cfg, device)
    if ckpt is not None:
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        run.step = int(ckpt["step"])
        run.log = checkpoint.read_log(run.files["loss_log"], run.step)
        run.saved_step = run.step if ckpt["done"] else -1
    if run.cfg.compile:
        run.model.encoder_q.compile(backend=run.cfg.compile_backend)
        run.model.encoder_k.compile(backend=run.cfg.compile_backend)
    run.net = distributed.wrap_ddp(run.model, device)


def _batch_rows(run: _Run, s: int) -> np.ndarray:
    """This rank's cache rows of step ``s`` (its slice of the global batch)."""
    epoch, i = divmod(s, run.spe)
    if epoch != run.order[0]:
        run.order = (epoch, epoch_order(len(run.rows), run.cfg.seed, epoch))
    batch = run.rows[run.order[1][i * run.cfg.batch_size:(i + 1) * run.cfg.batch_size]]
    return batch[distributed.rank_slice(len(batch), run.rank, run.world)]


def _save(run: _Run, step: int) -> None:
    """Checkpoint after ``step`` (rank 0 alone writes; every rank holds the same state)."""
    run.saved_step = step
    if run.rank == 0:
        checkpoint.save_checkpoint(run.files["checkpoint"], checkpoint.checkpoint_state(
            run.model, run.optimizer, run.cfg, step, run.spe, run.total, run.rows, run.world,
            run.pairs_sha1, run.device))


def _run_monitor(run: _Run, step: int, loss: float) -> None:
    metrics = run.monitor(run.model.encoder_q)
    run.model.train()
    row = next((r for r in run.log if r["step"] == step), None)
    if row is None:
        run.log.append(row := {"step": step, "epoch": step // run.spe, "loss": loss,
                               "lr": lr_at(run.cfg, max(step - 1, 0), run.total)})
    row.update({k: float(v) for k, v in metrics.items()})
    checkpoint.write_log(run.files["loss_log"], run.log)


def _flush(run: _Run) -> None:
    """Read the pending losses back into their log rows (one host sync for many steps)."""
    if run.pending:
        values = torch.stack([t for _, t in run.pending]).float().cpu().tolist()
        for (row, _), v in zip(run.pending, values):
            row["loss"] = v
        run.pending.clear()
        run.bar.set_postfix(loss=f"{values[-1]:.4f}")


def _after_step(run: _Run, lr: float, mean_loss: torch.Tensor) -> None:
    """Log the step just done; monitor and checkpoint when due."""
    run.step += 1
    step, cfg = run.step, run.cfg
    row = {"step": step, "epoch": (step - 1) // run.spe, "loss": float("nan"), "lr": lr}
    run.log.append(row)
    run.pending.append((row, mean_loss))
    run.bar.update(1)
    if len(run.pending) >= 20 or run.device.type == "cpu":
        _flush(run)
    if run.monitor is not None and (step == run.total or (
            cfg.monitor_every and step % cfg.monitor_every == 0)):
        _flush(run)
        _run_monitor(run, step, row["loss"])
    if step % run.spe == 0 or step == run.total or (
            cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0):
        _flush(run)
        _save(run, step)
        if run.rank == 0:
            checkpoint.write_log(run.files["loss_log"], run.log)


def _train(run: _Run) -> None:
    """Steps ``run.step`` .. ``run.total``; the next batch loads while this one trains."""
    pin = run.device.type == "cuda"
    with ThreadPoolExecutor(max_workers=1) as pool:
        if run.step < run.total:
            next_batch = pool.submit(runtime.load_batch, run.images, _batch_rows(run, run.step), pin)
        while run.step < run.total:
            with record_function("mocoxr.wait_batch"):  # named ranges for torch.profiler
                x = next_batch.result().to(run.device, non_blocking=True)
            if run.step + 1 < run.total:
                next_batch = pool.submit(runtime.load_batch, run.images,
                                         _batch_rows(run, run.step + 1), pin)
            xk = x if run.sampler is None else (  # MedAug: the key from another of the patient
                run.sampler.key_batch(_batch_rows(run, run.step), run.cfg.seed, run.step)
                .to(run.device))
            lr = lr_at(run.cfg, run.step, run.total)
            mean_loss = pretrain_step(run.net, run.optimizer, run.cfg, run.step, lr, x, xk,
                                      run.mean, run.std)
            _after_step(run, lr, mean_loss)


def _finish(run: _Run, data: Mapping[str, Any] | None) -> pd.DataFrame:
    """Final checkpoint, backbone, log and model card (rank 0); the log."""
    if run.saved_step != run.step:  # resumed exactly at the (new) end: mark the checkpoint done
        _save(run, run.step)
    if run.rank != 0:
        return pd.DataFrame(run.log)
    run.model.export_backbone(run.files["backbone"])
    df = checkpoint.write_log(run.files["loss_log"], run.log)
    checkpoint.write_card(run.files["backbone"], run.cfg, run.mean, run.std, run.step, df,
                          run.rows, data)
    return df


def pretrain(images: np.ndarray, rows: np.ndarray, cfg: PretrainConfig, out_dir: str | Path,
             mean: float, std: float, monitor: Callable[[nn.Module], dict] | None = None,
             progress: bool = True, data: Mapping[str, Any] | None = None,
             pairs: pairing.PairSampler | None = None) -> dict:
    """MoCo v2 pretraining on rows of a uint8 image cache; resumes and caches in ``out_dir``.

    ``images``: (N, H, W) uint8 (memmap fine); ``rows``: the positional rows to train on;
    ``mean``/``std``: the dataset's normalisation in [0, 1] units; ``monitor``: optional
    ``callable(encoder) -> dict of floats`` run at step 0, every ``cfg.monitor_every`` steps
    and at the end, its values logged as extra columns; ``data``: extra model-card fields;
    ``pairs``: the key sampler that a ``cfg.positive_pairs`` other than ``"image"`` needs
    (``mocoxr.pairs``; its candidate table is saved as ``pairs.csv``, its hash in the
    checkpoint). Returns ``{"checkpoint", "backbone", "loss_log"}`` paths plus ``"log"``
    (DataFrame), ``"step"`` and ``"cached"``.

    Resume: a ``checkpoint.pt`` in ``out_dir`` is continued when its config matches (fields in
    ``checkpoint.RESUMABLE_FIELDS`` may differ) and it was trained on the same rows; a finished
    one (step == total, done) returns at once without building a model. Under ``torchrun`` every
    rank calls this with the same arguments (module docstring); each rank then draws its
    augmentations from its own generator (seed, step, rank), so a distributed run is
    deterministic for a given world size but not equal to a single-process one.
    """
    out_dir = Path(out_dir)
    rows = runtime.check_images(images, rows)
    runtime.check_norm(mean, std)
    rank, world = distributed.dist_info()
    _check_inputs(cfg, len(rows), world)
    out_dir.mkdir(parents=True, exist_ok=True)
    sampler, pairs_sha1 = pairing.attach(pairs, cfg, rows, images, out_dir)
    files = checkpoint.run_files(out_dir)
    run = _Run(cfg, images, rows, mean, std, files, sampler, pairs_sha1, rank, world,
               steps_per_epoch(len(rows), cfg.batch_size), total_steps(cfg, len(rows)))
    if rank == 0:
        checkpoint.remove_stale_temporaries(files)
    ckpt = None
    if files["checkpoint"].exists():
        ckpt = checkpoint.load_checkpoint(files["checkpoint"])
        checkpoint.check_resumable(ckpt, cfg, rows, pairs_sha1, run.total, files["checkpoint"])
        if ckpt["step"] == run.total and ckpt["done"] and files["backbone"].exists() \
                and files["loss_log"].exists():
            df = pd.read_csv(files["loss_log"])
            if rank == 0:
                checkpoint.write_card(files["backbone"], cfg, mean, std, run.total, df, rows,
                                      data, only_missing=True)
            return {**files, "log": df, "step": run.total, "cached": True}
    _build(run, ckpt)
    run.model.train()
    run.monitor = monitor if rank == 0 else None  # rank 0 alone monitors and writes the log
    if run.monitor is not None and run.step == 0 and run.step < run.total:
        _run_monitor(run, 0, float("nan"))
    run.bar = tqdm(total=run.total, initial=run.step, desc=f"MoCo {cfg.backbone}",
                   disable=not progress or rank != 0, unit="step")
    try:
        _train(run)
    finally:
        run.bar.close()
    df = _finish(run, data)
    distributed.barrier()  # every rank returns once rank 0's files are in place
    return {**files, "log": df, "step": run.step, "cached": False}
