"""Training loops in plain sight: MoCo pretraining, feature extraction, linear probes, fine-tuning.

The style follows lightly's MoCo example: the loop is written out, helpers are small functions,
there is no trainer class. Every random draw is a pure function of ``(seed, step)`` (data order
of an epoch, the augmentation generator of a step, the global torch seed of a step), so a run
that is killed and resumed from its last checkpoint ends with exactly the weights of a run that
never stopped (on CPU, or on GPU with deterministic kernels).

Files written by :func:`pretrain` in its ``out_dir``:

- ``checkpoint.pt``: written atomically (temporary file, fsync, ``os.replace``) at the end of
  every epoch, every ``checkpoint_every_steps`` steps and at the end; loadable with
  ``torch.load(path, weights_only=True)`` (only tensors, dicts, lists, ints, floats, strings).
- ``loss_log.csv``: one row per optimizer step (``step, epoch, loss, lr``) plus the monitor's
  columns on the steps where it ran (``step 0`` is the monitor's value before training, with
  ``loss`` empty).
- ``backbone.pt``: the query encoder as a plain torchvision state dict (``models.export_backbone``).
- ``backbone.card.json``: its model card (``weights.make_card``: input size, normalisation, recipe,
  data, steps, monitor AUCs, date, mocoxr version, sha256 of ``backbone.pt``).

**Distributed.** :func:`pretrain` also runs under ``torchrun`` (see ``mocoxr.distributed``): when
``torch.distributed`` is initialised with more than one process, ``cfg.batch_size`` is the
*global* batch, each rank takes its contiguous slice (:func:`rank_slice`) of every global batch
of the seeded epoch order, the MoCo model is wrapped in DistributedDataParallel
(:func:`wrap_ddp`; shuffle-BN and the key gathering live in ``moco.MoCo``), the loss is scaled so
the averaged gradient is the gradient of the global-batch mean (:func:`distributed_loss`), and
rank 0 alone writes the checkpoint, the log and the backbone. Checkpoints hold the global step
and the global batch (in ``config``), so a run resumes on any number of processes.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import record_function
from tqdm.auto import tqdm

from mocoxr import augment, models, moco, store
from mocoxr import pairs as pairing

CHECKPOINT_FORMAT = "mocoxr-pretrain-v1"

# Config fields that may change between a run and its resume: they do not change what one step
# computes (device and speed settings) or only say how long to train (extend a finished run by
# raising ``epochs`` or ``max_steps``; the learning-rate drops are placed on the new total).
RESUMABLE_FIELDS = frozenset({"epochs", "max_steps", "device", "amp", "channels_last", "compile",
                              "compile_backend", "monitor_every", "checkpoint_every_steps"})


# ----------------------------------------------------------------------------- configuration


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
    queue_size: int = 24576           # reference: MoCo-CXR main_moco.py --moco-k default 24576
                                      # (r8w1n416.sh keeps it; facebookresearch/moco: 65536)
    momentum: float = 0.999           # reference: --moco-m 0.999
    temperature: float = 0.2          # paper / r8w1n416.sh: --moco-t 0.2
    dim: int = 128                    # reference: --moco-dim 128
    mlp: bool = True                  # paper: MoCo v2 MLP head (--mlp)
    bn_splits: int = 1                # ours: shuffle-BN in one process: BatchNorm over this many
                                      # groups of the batch, key batch shuffled across them
                                      # (moco.SplitBatchNorm2d); 1 = ordinary BatchNorm
    seed: int = 0                     # ours: every random draw derives from (seed, step)
    device: str = "auto"              # ours: "auto" = cuda when available, else cpu
    augment: dict = field(default_factory=dict)  # overrides of augment.AugmentConfig fields
                                      # (out_size is always image_size); JSON-able values only
    positive_pairs: str = "image"     # paper: "image" (both views from one image); MedAug (Vu
                                      # et al. 2021): "same_study"/"same_patient", the key from
                                      # another image of the study/patient (mocoxr.pairs)
    pair_laterals: bool = False       # MedAug: lateral views may be the key of a frontal query
    monitor_every: int = 0            # ours: run the monitor every N steps (it always runs
                                      # before training and at the end; 0 = only then)
    checkpoint_every_steps: int | None = None  # ours: extra checkpoints inside an epoch
    amp: str = "auto"                 # ours: "auto" (bf16 autocast on CUDA only), "bf16", "off"
    channels_last: str = "auto"       # ours: "auto" (on for CUDA and CPU), "on", "off"; on the
                                      # 2-core AVX2 CPU a ResNet18 step at 64 px took 0.64 s
                                      # channels_last against 0.84-0.92 s without
    compile: bool = False             # ours: torch.compile the two encoders (nn.Module.compile)
    compile_backend: str = "inductor"  # ours: torch.compile backend ("aot_eager": quick, for tests)


@dataclass
class FinetuneConfig:
    """End-to-end fine-tuning settings (paper sec. 3: Adam lr 1e-4, batch 16, epochs by
    :func:`probe_epochs`, capped here by ``max_epochs``; model selected by validation AUC)."""

    image_size: int = 320
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_epochs: int | None = None     # ours: cap on probe_epochs(label_fraction) (CPU budgets)
    label_fraction: float = 1.0       # sets the epoch count through probe_epochs
    seed: int = 0
    device: str = "auto"
    augment: dict = field(default_factory=dict)  # overrides of augment.AugmentConfig fields
    eval_batch_size: int = 64
    amp: str = "auto"
    channels_last: str = "auto"       # as PretrainConfig.channels_last
    head_warmup_epochs: int = 0       # ours: the first N epochs train the new head alone, the
                                      # encoder frozen in eval mode (LP-FT, Kumar et al. 2022)
    encoder_lr_scale: float = 1.0     # ours: encoder lr = lr x this; the head keeps lr


# ----------------------------------------------------------------------------- small helpers


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> cuda when available, else cpu; anything else as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def config_dict(cfg: Any) -> dict:
    """A dataclass config as plain JSON types (tuples become lists)."""
    try:
        return json.loads(json.dumps(dataclasses.asdict(cfg)))
    except TypeError as err:
        raise ValueError(f"config values must be JSON-serialisable: {err}") from err


def _use_amp(setting: str, device: torch.device) -> bool:
    if setting not in ("auto", "bf16", "off"):
        raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {setting!r}")
    return setting == "bf16" or (setting == "auto" and device.type == "cuda")


def _use_channels_last(setting: str, device: torch.device) -> bool:
    """``auto``: on for CUDA (tensor cores) and CPU (oneDNN's NHWC convolutions), off elsewhere."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"channels_last must be 'auto', 'on' or 'off', got {setting!r}")
    return setting == "on" or (setting == "auto" and device.type in ("cuda", "cpu"))


def adam(params: list[nn.Parameter], lr: float, weight_decay: float,
         device: torch.device) -> torch.optim.Adam:
    """Adam with the fused single-kernel update on CPU and CUDA; the maths is Adam's. On the
    2-core CPU an update of a ResNet18's parameters took 17 ms fused against 63-145 ms
    per-tensor with one thread (13 against 40-86 ms with two)."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay,
                            fused=device.type in ("cpu", "cuda") or None)


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through ``write(fileobj)`` to a temporary sibling, fsync, then ``os.replace``."""
    store.atomic_write(path, write, mode)  # a full disk or read-only folder: one-line StorageError


def _check_images(images: np.ndarray, rows: np.ndarray, name: str = "rows") -> np.ndarray:
    if not (isinstance(images, np.ndarray) and images.ndim == 3 and images.dtype == np.uint8):
        raise ValueError("images must be a uint8 array (N, H, W) (the decoded-image cache), got "
                         f"{type(images).__name__} {getattr(images, 'dtype', '')} "
                         f"{getattr(images, 'shape', '')}")
    rows = np.asarray(rows)
    if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D array of integer row indices, got {rows.dtype} "
                         f"{rows.shape}")
    rows = rows.astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(images)):
        raise ValueError(f"{name} index outside the image cache of {len(images)} images "
                         f"(min {rows.min()}, max {rows.max()})")
    return rows


def _check_norm(mean: float, std: float) -> None:
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"mean and std must be finite with std > 0, got mean={mean}, std={std}")


def _load_batch(images: np.ndarray, idx: np.ndarray, pin: bool,
                in_order: bool = False) -> torch.Tensor:
    """uint8 (B, H, W) tensor of the given cache rows, pinned when ``pin``; read in sorted
    order (memmap friendly) unless ``in_order``."""
    x = torch.from_numpy(np.ascontiguousarray(images[idx if in_order else np.sort(idx)]))
    return x.pin_memory() if pin else x


def _is_channels_last(model: nn.Module) -> bool:
    """Whether the model's first convolution weight is stored channels-last."""
    w = next((p for p in model.parameters() if p.dim() == 4), None)
    return w is not None and w.is_contiguous(memory_format=torch.channels_last) \
        and not w.is_contiguous()


def _ordered_batches(images: np.ndarray, rows: np.ndarray, batch_size: int,
                     device: torch.device) -> Iterator[torch.Tensor]:
    """uint8 (B, 1, H, W) batches of ``rows`` in order, on ``device``; the next one is read
    (and pinned, on CUDA) in a background thread while the caller uses this one."""
    pin = device.type == "cuda"
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_load_batch, images, batches[0], pin, True) if batches else None
        for j in range(len(batches)):
            x = pending.result().to(device, non_blocking=True)
            if j + 1 < len(batches):
                pending = pool.submit(_load_batch, images, batches[j + 1], pin, True)
            yield x.unsqueeze(1)


# ----------------------------------------------------------------------------- distributed


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised torch.distributed group; ``(0, 1)`` otherwise."""
    if moco.is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_slice(n: int, rank: int, world: int) -> slice:
    """This rank's contiguous share of a global batch of ``n`` (shares differ by at most one)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world) with world >= 1, got rank={rank}, world={world}")
    base, extra = divmod(int(n), world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when distributed (else ``model`` itself).

    Only the query encoder and head have gradients, so only they are all-reduced. Buffers are
    not broadcast at every forward (``broadcast_buffers=False``): the queue is kept identical on
    every rank by construction (all ranks enqueue the same gathered keys) and broadcasting it
    each step would only cost bandwidth; BatchNorm running statistics stay per rank (training
    uses batch statistics; rank 0's are the ones saved, as in facebookresearch/moco). DDP's
    constructor broadcasts rank 0's parameters and buffers once, so all ranks start equal.
    """
    if not moco.is_distributed():
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
    if not moco.is_distributed():
        return loss, loss.detach()
    w = local_batch / global_batch
    mean = loss.detach() * w
    dist.all_reduce(mean)
    return loss * (w * dist.get_world_size()), mean


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | Path, state: dict) -> None:
    """``torch.save`` atomically: a checkpoint never exists half-written."""
    _atomic_write(Path(path), lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | Path) -> dict:
    """Load a pretraining checkpoint with ``weights_only=True``; clear error when corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated / foreign files
        raise ValueError(f"checkpoint {path} is corrupt or not a torch checkpoint "
                         f"({type(err).__name__}: {str(err)[:200]}); delete it to start over") from err
    needed = {"format", "model", "optimizer", "step", "epoch", "done", "config", "rng"}
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or needed - set(ckpt):
        raise ValueError(f"checkpoint {path} is not a {CHECKPOINT_FORMAT} checkpoint (missing "
                         f"{sorted(needed - set(ckpt)) if isinstance(ckpt, dict) else 'everything'})")
    return ckpt


def _check_same_config(saved: dict, cfg: PretrainConfig, path: Path) -> None:
    wanted = config_dict(cfg)
    diff = [f"{k}: saved {saved.get(k)!r}, requested {wanted[k]!r}" for k in wanted
            if k not in RESUMABLE_FIELDS and saved.get(k) != wanted[k]]
    if diff:
        raise ValueError(f"checkpoint {path} was written with another config ({'; '.join(diff)}); "
                         "use another out_dir or delete the checkpoint to start over")


def _read_log(path: Path, upto_step: int) -> list[dict]:
    """Rows of an existing loss log up to and including ``upto_step`` (later rows were lost)."""
    if not path.exists():
        return []
    log = pd.read_csv(path)
    return log[log["step"] <= upto_step].to_dict("records")


def _write_log(path: Path, log: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(log)
    if df.empty:
        df = pd.DataFrame(columns=["step", "epoch", "loss", "lr"])
    _atomic_write(path, lambda fh: df.to_csv(fh, index=False), mode="w")
    return df


# ----------------------------------------------------------------------------- pretraining


def _write_card(backbone_path: Path, cfg: PretrainConfig, mean: float, std: float, step: int,
                log: pd.DataFrame, rows: np.ndarray, data: Mapping[str, Any] | None,
                only_missing: bool = False) -> None:
    """The model card beside the exported backbone (``weights.write_model_card``)."""
    from mocoxr import weights

    if only_missing:
        try:
            weights.read_model_card(backbone_path)
            return
        except (FileNotFoundError, ValueError):
            pass  # no card yet, or a stale one: write it
    weights.write_model_card(backbone_path, backbone=cfg.backbone, input_size=cfg.image_size,
                             mean=mean, std=std, recipe=config_dict(cfg), steps=step, log=log,
                             data={"pretraining_images": int(len(rows)), **dict(data or {})})


def pretrain(images: np.ndarray, rows: np.ndarray, cfg: PretrainConfig, out_dir: str | Path,
             mean: float, std: float, monitor: Callable[[nn.Module], dict] | None = None,
             progress: bool = True, data: Mapping[str, Any] | None = None,
             pairs: pairing.PairSampler | None = None) -> dict:
    """MoCo v2 pretraining on rows of a uint8 image cache; resumes and caches in ``out_dir``.

    ``images``: (N, H, W) uint8 (memmap fine); ``rows``: the positional rows to train on;
    ``mean``/``std``: the dataset's normalisation in [0, 1] units; ``monitor``: optional
    ``callable(encoder) -> dict of floats`` run at step 0, every ``cfg.monitor_every`` steps
    and at the end, its values logged as extra columns; ``pairs``: the key sampler that a
    ``cfg.positive_pairs`` other than ``"image"`` needs (``mocoxr.pairs``; its candidate table
    is saved as ``pairs.csv``, its hash in the checkpoint). Returns ``{"checkpoint",
    "backbone", "loss_log"}`` paths plus ``"log"`` (DataFrame), ``"step"`` and ``"cached"``.

    Resume: a ``checkpoint.pt`` in ``out_dir`` is continued when its config matches (fields in
    ``RESUMABLE_FIELDS`` may differ) and it was trained on the same rows; a finished one
    (step == total, done) returns at once without building a model. Checkpoint contents:
    ``model`` (MoCo state dict: both encoders, heads, ``queue``, ``queue_ptr``), ``optimizer``,
    ``step`` (optimizer steps done), ``epoch`` (= step // steps per epoch), ``step_in_epoch``,
    ``done``, ``config`` (dict), ``rng`` (torch RNG state, informational: every draw is
    re-derived from (seed, step)), ``n_rows``, ``rows_sha1``, ``format``, ``time``,
    ``world_size`` (processes that wrote it; informational).

    Under ``torchrun`` (torch.distributed initialised, world size > 1) every rank calls this
    with the same arguments; see the module docstring. Each rank then draws its augmentations
    from its own generator (seed, step, rank), so a distributed run is deterministic for a given
    world size but not equal to a single-process one (BatchNorm sees per-rank batches anyway).
    """
    out_dir = Path(out_dir)
    rows = _check_images(images, rows)
    _check_norm(mean, std)
    if cfg.batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (batch norm), got {cfg.batch_size}")
    if len(rows) < cfg.batch_size:
        raise ValueError(f"{len(rows)} training rows is fewer than one batch of {cfg.batch_size}")
    rank, world = dist_info()
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
    out_dir.mkdir(parents=True, exist_ok=True)
    sampler, pairs_sha1 = pairing.attach(pairs, cfg, rows, images, out_dir)
    ckpt_path, backbone_path = out_dir / "checkpoint.pt", out_dir / "backbone.pt"
    log_path = out_dir / "loss_log.csv"
    spe, total = steps_per_epoch(len(rows), cfg.batch_size), total_steps(cfg, len(rows))
    paths = {"checkpoint": ckpt_path, "backbone": backbone_path, "loss_log": log_path}

    if rank == 0:  # temporaries of a writer that was killed (SIGKILL, preemption) are garbage
        for name in (ckpt_path.name, log_path.name, backbone_path.name):
            for stale in out_dir.glob(f".{name}.*tmp*"):
                stale.unlink(missing_ok=True)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
    if ckpt is not None:
        _check_same_config(ckpt["config"], cfg, ckpt_path)
        if ckpt.get("rows_sha1") != hashlib.sha1(rows.tobytes()).hexdigest():
            raise ValueError(f"checkpoint {ckpt_path} was trained on other rows ({ckpt.get('n_rows')} "
                             f"rows, now {len(rows)}); use another out_dir")
        if ckpt.get("pairs_sha1") != pairs_sha1:
            raise ValueError(f"checkpoint {ckpt_path} was trained with other positive pairs "
                             f"(see {out_dir / 'pairs.csv'}); use another out_dir")
        if ckpt["step"] > total:
            raise ValueError(f"checkpoint {ckpt_path} is at step {ckpt['step']}, past the "
                             f"{total} steps requested; use another out_dir")
        if ckpt["step"] == total and ckpt["done"] and backbone_path.exists() and log_path.exists():
            df = pd.read_csv(log_path)
            if rank == 0:
                _write_card(backbone_path, cfg, mean, std, total, df, rows, data, only_missing=True)
            return {**paths, "log": df, "step": total, "cached": True}

    # --- model, optimizer, state
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None and world > 1:
        device = torch.device("cuda", torch.cuda.current_device())  # torchrun: set by the launcher
    model = moco.MoCo(backbone=cfg.backbone, init=cfg.init, dim=cfg.dim,
                      queue_size=cfg.queue_size, momentum=cfg.momentum,
                      temperature=cfg.temperature, mlp=cfg.mlp, seed=cfg.seed,
                      bn_splits=cfg.bn_splits)
    channels_last = _use_channels_last(cfg.channels_last, device)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = adam([p for p in model.parameters() if p.requires_grad], cfg.lr,
                     cfg.weight_decay, device)
    step, log, saved_step = 0, [], -1
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        step, log = int(ckpt["step"]), _read_log(log_path, int(ckpt["step"]))
        saved_step = step if ckpt["done"] else -1
    if cfg.compile:
        model.encoder_q.compile(backend=cfg.compile_backend)
        model.encoder_k.compile(backend=cfg.compile_backend)
    net = wrap_ddp(model, device)  # the module that runs the step (model itself in one process)
    aug_cfg = augment.AugmentConfig(out_size=cfg.image_size, **cfg.augment)
    use_amp = _use_amp(cfg.amp, device)
    pin = device.type == "cuda"

    def checkpoint(step: int) -> None:
        nonlocal saved_step
        saved_step, epoch = step, step // spe
        if rank != 0:  # rank 0 alone writes; every rank holds the same state
            return
        rng = {"torch": torch.get_rng_state(), "scheme": "per-step, derived from (seed, step)"}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        save_checkpoint(ckpt_path, {
            "format": CHECKPOINT_FORMAT, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "step": step, "epoch": epoch,
            "step_in_epoch": step - epoch * spe, "done": step >= total,
            "config": config_dict(cfg), "rng": rng, "n_rows": len(rows),
            "rows_sha1": hashlib.sha1(rows.tobytes()).hexdigest(), "time": time.time(),
            "world_size": world, "pairs_sha1": pairs_sha1})

    def run_monitor(step: int, loss: float) -> None:
        metrics = monitor(model.encoder_q)
        model.train()
        row = next((r for r in log if r["step"] == step), None)
        if row is None:
            log.append(row := {"step": step, "epoch": step // spe, "loss": loss,
                               "lr": lr_at(cfg, max(step - 1, 0), total)})
        row.update({k: float(v) for k, v in metrics.items()})
        _write_log(log_path, log)

    # --- the loop
    model.train()
    if rank != 0:
        monitor = None  # rank 0 alone monitors and writes the log
    if monitor is not None and step == 0 and step < total:
        run_monitor(0, float("nan"))
    pending: list[tuple[dict, torch.Tensor]] = []  # losses read back lazily (no sync per step)

    def flush() -> None:
        if pending:
            values = torch.stack([t for _, t in pending]).float().cpu().tolist()
            for (row, _), v in zip(pending, values):
                row["loss"] = v
            pending.clear()
            bar.set_postfix(loss=f"{values[-1]:.4f}")

    bar = tqdm(total=total, initial=step, desc=f"MoCo {cfg.backbone}",
               disable=not progress or rank != 0, unit="step")
    pool = ThreadPoolExecutor(max_workers=1)  # loads the next batch while this one trains
    order, order_epoch, next_batch = None, -1, None

    def batch_rows(s: int) -> np.ndarray:
        nonlocal order, order_epoch
        epoch, i = divmod(s, spe)
        if epoch != order_epoch:
            order, order_epoch = epoch_order(len(rows), cfg.seed, epoch), epoch
        batch = rows[order[i * cfg.batch_size:(i + 1) * cfg.batch_size]]
        return batch[rank_slice(len(batch), rank, world)]  # this rank's slice of the global batch

    try:
        if step < total:
            next_batch = pool.submit(_load_batch, images, batch_rows(step), pin)
        while step < total:
            with record_function("mocoxr.wait_batch"):  # named ranges for torch.profiler
                x = next_batch.result().to(device, non_blocking=True)
            if step + 1 < total:
                next_batch = pool.submit(_load_batch, images, batch_rows(step + 1), pin)
            # every random draw of this step derives from (seed, step)
            # (augmentation parameters come from a CPU generator on every device: no host sync,
            # the same warps on CPU and GPU; in a distributed run each rank draws its own)
            torch.manual_seed(derive_seed(cfg.seed, step, 1))
            gen = torch.Generator()
            gen.manual_seed(derive_seed(cfg.seed, step, 2) if world == 1
                            else derive_seed(cfg.seed, step, 2, rank))
            xk = x if sampler is None else (  # MedAug: the key image from another of the patient
                sampler.key_batch(batch_rows(step), cfg.seed, step).to(device))
            with torch.no_grad(), record_function("mocoxr.augment"):
                im_q = augment.to_model_input(augment.augment_batch(x, aug_cfg, gen), mean, std)
                im_k = augment.to_model_input(augment.augment_batch(xk, aug_cfg, gen), mean, std)
                if channels_last:
                    im_q = im_q.contiguous(memory_format=torch.channels_last)
                    im_k = im_k.contiguous(memory_format=torch.channels_last)
            lr = lr_at(cfg, step, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp), \
                    record_function("mocoxr.forward"):
                loss, _ = net(im_q, im_k)  # momentum update + enqueue happen inside MoCo
            loss, mean_loss = distributed_loss(loss, x.shape[0], cfg.batch_size)
            optimizer.zero_grad(set_to_none=True)
            with record_function("mocoxr.backward"):
                loss.backward()
            with record_function("mocoxr.optimizer"):
                optimizer.step()

            step += 1
            row = {"step": step, "epoch": (step - 1) // spe, "loss": float("nan"), "lr": lr}
            log.append(row)
            pending.append((row, mean_loss))
            bar.update(1)
            if len(pending) >= 20 or device.type == "cpu":
                flush()
            if monitor is not None and (step == total or (
                    cfg.monitor_every and step % cfg.monitor_every == 0)):
                flush()
                run_monitor(step, row["loss"])
            if step % spe == 0 or step == total or (
                    cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0):
                flush()
                checkpoint(step)
                if rank == 0:
                    _write_log(log_path, log)
    finally:
        pool.shutdown(wait=True)
        bar.close()

    if saved_step != step:  # resumed exactly at the (new) end: mark the checkpoint done
        checkpoint(step)
    if rank == 0:
        model.export_backbone(backbone_path)
        df = _write_log(log_path, log)
        _write_card(backbone_path, cfg, mean, std, step, df, rows, data)
    else:
        df = pd.DataFrame(log)
    if world > 1:
        dist.barrier()  # every rank returns once rank 0's files are in place
    return {**paths, "log": df, "step": step, "cached": False}


# ----------------------------------------------------------------------------- features


def _as_encoder(model: nn.Module) -> nn.Module:
    """The (B,3,H,W)->(B,D) encoder of a MoCo model, a torchvision model or an encoder."""
    if hasattr(model, "encoder_q"):
        return model.encoder_q
    head = getattr(model, "fc", getattr(model, "classifier", None))
    if head is None or isinstance(head, nn.Identity):
        return model
    return models.encoder(model)


def state_dict_sha1(model: nn.Module) -> str:
    """Content hash of a module's state dict (names, dtypes, shapes and values)."""
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _feature_meta(key: str, images: np.ndarray, rows: np.ndarray, mean: float, std: float,
                  image_size: int) -> dict:
    return {"key": key, "rows_sha1": hashlib.sha1(rows.tobytes()).hexdigest(),
            "n_rows": int(len(rows)), "image_size": int(image_size), "mean": float(mean),
            "std": float(std), "images_shape": [int(s) for s in images.shape]}


def load_cached_features(cache_file: str | Path, meta: dict) -> np.ndarray | None:
    """Features stored in ``cache_file`` when its JSON sidecar equals ``meta``; else None."""
    cache_file = Path(cache_file)
    sidecar = cache_file.with_suffix(".json")
    if not (cache_file.exists() and sidecar.exists()):
        return None
    try:
        if json.loads(sidecar.read_text()) != meta:
            return None
        feats = np.load(cache_file)
    except (ValueError, OSError):
        return None  # unreadable cache: recompute
    return feats if feats.shape[0] == meta["n_rows"] else None


@torch.no_grad()
def extract_features(model: nn.Module | Callable[[], nn.Module], images: np.ndarray,
                     rows: np.ndarray, mean: float, std: float, image_size: int,
                     batch_size: int = 64, device: str | torch.device | None = "cpu",
                     cache_file: str | Path | None = None, key: str | None = None,
                     progress: bool = False, channels_last: str = "auto") -> np.ndarray:
    """Frozen-encoder features (len(rows), D) float32 of cache rows, resized to ``image_size``.

    ``model``: a MoCo model, a torchvision model (its classifier is dropped) or an encoder, or a
    zero-argument callable returning one (only called on a cache miss). ``device``: where to run
    (``None``: where the model already is; ``"auto"``: cuda when available). With ``cache_file``
    (``.npy``) the result is stored with a JSON sidecar keyed by ``key`` (default: a hash of the
    model's weights), the rows, ``image_size``, mean and std, and reused when they match.
    ``channels_last``: as ``PretrainConfig.channels_last`` (``auto``: on for CUDA and CPU; the
    encoder is converted in place, like ``.to(device)``). The next batch is read from the cache
    (pinned on CUDA) while this one runs. The model's train/eval mode is restored afterwards.
    """
    rows = _check_images(images, rows)
    _check_norm(mean, std)
    if batch_size < 1 or image_size < 1:
        raise ValueError(f"batch_size and image_size must be >= 1, got {batch_size}, {image_size}")
    _use_channels_last(channels_last, torch.device("cpu"))  # a bad setting fails before the cache
    if cache_file is not None:
        if not isinstance(model, nn.Module) and key is None:
            raise ValueError("a lazily built model needs an explicit cache key")
        meta = _feature_meta(key or state_dict_sha1(model), images, rows, mean, std, image_size)
        cached = load_cached_features(cache_file, meta)
        if cached is not None:
            return cached
    if not isinstance(model, nn.Module):
        model = model()
    enc = _as_encoder(model)
    if device is None:
        device = next(enc.parameters()).device
    device = resolve_device(device)
    nhwc = _use_channels_last(channels_last, device)
    was_training = enc.training
    enc.to(device).eval()
    if nhwc:
        enc.to(memory_format=torch.channels_last)
    chunks = []
    try:
        for x in tqdm(_ordered_batches(images, rows, batch_size, device),
                      total=-(-len(rows) // batch_size), disable=not progress, desc="features"):
            x = augment.to_model_input(augment.resize_batch(x, image_size), mean, std)
            if nhwc:
                x = x.contiguous(memory_format=torch.channels_last)
            chunks.append(enc(x).float().reshape(x.shape[0], -1).cpu())
    finally:
        enc.train(was_training)
    feats = (torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)).astype(np.float32)
    if cache_file is not None:
        cache_file = Path(cache_file)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(cache_file, lambda fh: np.save(fh, feats))
        _atomic_write(cache_file.with_suffix(".json"),
                      lambda fh: fh.write(json.dumps(meta, indent=1)), mode="w")
    return feats


def knn_scores(train_X: np.ndarray, train_y: np.ndarray, test_X: np.ndarray, k: int = 20,
               temperature: float = 0.1) -> np.ndarray:
    """Similarity-weighted k-NN score (share of positive neighbours) on cosine similarity."""
    a = torch.nn.functional.normalize(torch.as_tensor(train_X, dtype=torch.float32), dim=1)
    b = torch.nn.functional.normalize(torch.as_tensor(test_X, dtype=torch.float32), dim=1)
    sim, idx = (b @ a.T).topk(min(k, len(a)), dim=1)
    w = torch.exp(sim / temperature)
    y = torch.as_tensor(np.asarray(train_y), dtype=torch.float32)[idx]
    return ((w * y).sum(1) / w.sum(1)).numpy()


def make_knn_monitor(images: np.ndarray, train_rows: np.ndarray, train_y: np.ndarray,
                     eval_rows: np.ndarray, eval_y: np.ndarray, mean: float, std: float,
                     image_size: int, k: int = 20, batch_size: int = 64,
                     linear_C: float | None = 0.1) -> Callable[[nn.Module], dict]:
    """A pretraining monitor: AUC on ``eval`` rows of read-outs fitted on labelled ``train`` rows.

    Returns ``callable(encoder) -> {"knn_auc": float, "linear_auc": float}``: a cosine k-NN
    vote and (unless ``linear_C`` is None) an L2 logistic regression with inverse regularisation
    ``linear_C`` on standardised features. Features are extracted on the encoder's own device,
    in eval mode, without augmentation.
    """
    train_y, eval_y = np.asarray(train_y), np.asarray(eval_y)
    for name, y in (("train_y", train_y), ("eval_y", eval_y)):
        if len(np.unique(y)) != 2:
            raise ValueError(f"{name} needs both classes 0 and 1 for an AUC")
    if linear_C is not None and not linear_C > 0:
        raise ValueError(f"linear_C must be > 0 or None, got {linear_C}")
    both = np.concatenate([np.asarray(train_rows), np.asarray(eval_rows)])

    def monitor(encoder: nn.Module) -> dict:
        feats = extract_features(encoder, images, both, mean, std, image_size,
                                 batch_size=batch_size, device=None,  # the training model's
                                 channels_last="on" if _is_channels_last(encoder) else "off")
        n = len(train_rows)
        scores = knn_scores(feats[:n], train_y, feats[n:], k=k)
        out = {"knn_auc": float(roc_auc_score(eval_y, scores))}
        if linear_C is not None:
            probs = linear_probe(feats[:n], train_y, feats[n:], method="logreg", C=linear_C)
            out["linear_auc"] = float(roc_auc_score(eval_y, probs))
        return out

    return monitor


# ----------------------------------------------------------------------------- probes


def probe_epochs(label_fraction: float) -> int:
    """The paper's epoch rule ``int(5 * 4 ** log8(1 / f))`` (= 5 * (1/f) ** (2/3)).

    f=1 -> 5, 0.1 -> 23, 0.01 -> 107, 0.001 -> 500 (a 1e-9 guard keeps 499.999... at 500).
    """
    f = float(label_fraction)
    if not 0 < f <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
    return int(5 * 4 ** math.log(1 / f, 8) + 1e-9)


def _check_xy(X: Any, y: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"{name}: need features (N, D) and labels (N,), got {X.shape} and {y.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    if not np.isin(y, (0, 1)).all() or len(np.unique(y)) != 2:
        raise ValueError(f"{name}: labels must be 0/1 with at least one positive and one "
                         f"negative, got values {np.unique(y)[:5]}")
    return X, y.astype(np.int64)


def linear_probe(train_X: np.ndarray, train_y: np.ndarray, test_X: np.ndarray,
                 method: str = "logreg", label_fraction: float = 1.0,
                 val: tuple[np.ndarray, np.ndarray] | None = None, seed: int = 0, *,
                 Cs: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0), C: float = 1.0,
                 max_iter: int = 2000, epochs: int | None = None, batch_size: int = 16,
                 lr: float = 1e-4, standardize: bool | None = None,
                 unlabelled_X: np.ndarray | None = None,
                 device: str | torch.device = "cpu", return_info: bool = False):
    """Fit a linear classifier on frozen features; return test scores (N_test,) in [0, 1].

    ``logreg`` (fast default): StandardScaler + sklearn LogisticRegression (L2); with ``val``
    the inverse regularisation C is chosen from ``Cs`` by validation AUC, otherwise ``C``.
    ``adam`` (the paper's variant): one linear layer trained with Adam (``lr`` 1e-4,
    ``batch_size``, ``epochs`` = ``probe_epochs(label_fraction)`` unless given), BCE loss;
    with ``val`` the epoch with the best validation AUC is kept. ``standardize`` defaults to
    True for logreg and False for adam (the paper feeds raw features). The scaler is fitted on
    ``unlabelled_X`` when given (features of the whole training split: images are plentiful,
    only labels are scarce), else on ``train_X``; a scaler fitted on the 2 rows of a 0.1%
    subset scales every feature to +-1 and throws away which features vary. With
    ``return_info`` returns ``(scores, info dict)``.
    """
    X, y = _check_xy(train_X, train_y, "train")
    T = np.asarray(test_X, dtype=np.float64)
    if T.ndim != 2 or T.shape[1] != X.shape[1] or not np.isfinite(T).all():
        raise ValueError(f"test_X must be finite (N, {X.shape[1]}), got {T.shape}")
    if val is not None:
        V, vy = _check_xy(val[0], val[1], "val")
        if V.shape[1] != X.shape[1]:
            raise ValueError(f"val features have {V.shape[1]} columns, train has {X.shape[1]}")
    if method not in ("logreg", "adam"):
        raise ValueError(f"method must be 'logreg' or 'adam', got {method!r}")
    if standardize is None:
        standardize = method == "logreg"
    if unlabelled_X is not None:
        U = np.asarray(unlabelled_X, dtype=np.float64)
        if U.ndim != 2 or U.shape[1] != X.shape[1] or len(U) < 2 or not np.isfinite(U).all():
            raise ValueError(f"unlabelled_X must be finite (N >= 2, {X.shape[1]}), got {U.shape}")
    if standardize:
        scaler = StandardScaler().fit(U if unlabelled_X is not None else X)
        X, T = scaler.transform(X), scaler.transform(T)
        if val is not None:
            V = scaler.transform(V)

    if method == "logreg":
        grid = Cs if val is not None else (C,)
        best = None
        for c in grid:
            clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(X, y)
            score = roc_auc_score(vy, clf.predict_proba(V)[:, 1]) if val is not None else 0.0
            if best is None or score > best[0]:
                best = (score, c, clf)
        scores = best[2].predict_proba(T)[:, 1]
        info = {"method": "logreg", "C": best[1],
                "val_auc": best[0] if val is not None else None}
    else:
        scores, info = _adam_probe(X, y, T, (V, vy) if val is not None else None,
                                   epochs or probe_epochs(label_fraction), batch_size, lr, seed,
                                   resolve_device(device))
    return (scores, info) if return_info else scores


def _adam_probe(X, y, T, val, epochs, batch_size, lr, seed, device):
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = nn.Linear(X.shape[1], 1).to(device)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    Xt = torch.as_tensor(X, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y, dtype=torch.float32, device=device)
    Vt = torch.as_tensor(val[0], dtype=torch.float32, device=device) if val is not None else None
    best, history = (-1.0, None, epochs), []
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(Xt), generator=gen).split(batch_size):
            idx = idx.to(device)
            loss = nn.functional.binary_cross_entropy_with_logits(layer(Xt[idx]).squeeze(1), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if Vt is not None:
            with torch.no_grad():
                auc = float(roc_auc_score(val[1], layer(Vt).squeeze(1).cpu().numpy()))
            history.append(auc)
            if auc > best[0]:
                best = (auc, copy.deepcopy(layer.state_dict()), epoch)
    if best[1] is not None:
        layer.load_state_dict(best[1])
    with torch.no_grad():
        scores = torch.sigmoid(layer(torch.as_tensor(T, dtype=torch.float32, device=device)))
    info = {"method": "adam", "epochs": epochs, "best_epoch": best[2],
            "val_auc": best[0] if Vt is not None else None, "val_auc_history": history}
    return scores.squeeze(1).cpu().numpy().astype(np.float64), info


# ----------------------------------------------------------------------------- fine-tuning


def _replace_head(model: nn.Module, seed: int) -> nn.Module:
    """Swap a torchvision model's classifier for a seeded Linear(D, 1)."""
    attr = models.head_name(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        setattr(model, attr, nn.Linear(models.feature_dim(model), 1))
    return model


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, rows: np.ndarray, mean: float, std: float,
            image_size: int, batch_size: int = 64, use_amp: bool = False) -> np.ndarray:
    """Sigmoid scores of a one-logit model on cache rows (eval mode, no augmentation)."""
    device = next(model.parameters()).device
    model.eval()
    out = []
    nhwc = _is_channels_last(model)  # inputs in the model's own memory format
    for x in _ordered_batches(images, rows, batch_size, device):
        x = augment.to_model_input(augment.resize_batch(x, image_size), mean, std)
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out.append(torch.sigmoid(model(x).float().reshape(-1)).cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def _finetune_optimizer(model: nn.Module, cfg: FinetuneConfig,
                        device: torch.device) -> torch.optim.Adam:
    """Adam with two groups: the new head at ``cfg.lr``, the encoder at ``lr x encoder_lr_scale``."""
    if cfg.head_warmup_epochs < 0 or not cfg.encoder_lr_scale > 0:
        raise ValueError("head_warmup_epochs must be >= 0 and encoder_lr_scale > 0, got "
                         f"{cfg.head_warmup_epochs} and {cfg.encoder_lr_scale}")
    head_ids = {id(p) for p in getattr(model, models.head_name(model)).parameters()}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    head = [p for p in model.parameters() if id(p) in head_ids]
    groups = [{"params": body, "lr": cfg.lr * cfg.encoder_lr_scale}, {"params": head, "lr": cfg.lr}]
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=device.type in ("cpu", "cuda") or None)


def finetune(backbone: str, init: str, images: np.ndarray, train_rows: np.ndarray,
             train_y: np.ndarray, val_rows: np.ndarray, val_y: np.ndarray,
             test_rows: np.ndarray, mean: float, std: float, cfg: FinetuneConfig,
             return_history: bool = False, progress: bool = False,
             save_model: str | Path | None = None):
    """End-to-end fine-tuning of a torchvision backbone with a one-logit head.

    ``init``: ``random``, ``imagenet`` or a checkpoint / exported state dict path
    (``models.create_backbone``). Adam (``cfg.lr``), epochs ``min(probe_epochs(f),
    cfg.max_epochs)``, augmented training batches (seeded by (seed, epoch, batch)), validation
    AUC after every epoch; the best epoch's weights score the test rows (and are written to
    ``save_model`` when given: the torchvision state dict with a 1-output head). Returns test scores,
    or ``(scores, history DataFrame[epoch, train_loss, val_auc, best])`` with ``return_history``.
    """
    train_rows = _check_images(images, train_rows, "train_rows")
    val_rows = _check_images(images, val_rows, "val_rows")
    test_rows = _check_images(images, test_rows, "test_rows")
    _check_norm(mean, std)
    train_y, val_y = np.asarray(train_y), np.asarray(val_y)
    for name, r, yy in (("train", train_rows, train_y), ("val", val_rows, val_y)):
        if len(r) != len(yy) or not np.isin(yy, (0, 1)).all() or len(np.unique(yy)) != 2:
            raise ValueError(f"{name}: need one 0/1 label per row and both classes, got "
                             f"{len(r)} rows, {len(yy)} labels, values {np.unique(yy)[:5]}")
    if cfg.batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (batch norm), got {cfg.batch_size}")
    epochs = probe_epochs(cfg.label_fraction)
    if cfg.max_epochs is not None:
        epochs = min(epochs, int(cfg.max_epochs))
    if epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {cfg.max_epochs}")
    device = resolve_device(cfg.device)
    use_amp = _use_amp(cfg.amp, device)
    channels_last = _use_channels_last(cfg.channels_last, device)
    model = _replace_head(models.create_backbone(backbone, init=init, seed=cfg.seed), cfg.seed)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _finetune_optimizer(model, cfg, device)
    aug_cfg = augment.AugmentConfig(out_size=cfg.image_size, **cfg.augment)
    y_all = torch.as_tensor(train_y, dtype=torch.float32)
    head = getattr(model, models.head_name(model))

    history, best = [], (-1.0, None, 0)
    for epoch in tqdm(range(epochs), disable=not progress, desc=f"fine-tune {backbone}/{init}"):
        warmup = epoch < cfg.head_warmup_epochs
        model.train(not warmup)  # head warm-up: BatchNorm statistics frozen too
        head.train()
        for p in model.parameters():
            p.requires_grad_(True)
        if warmup:
            for p in model.parameters():
                p.requires_grad_(False)
            for p in head.parameters():
                p.requires_grad_(True)
        order = epoch_order(len(train_rows), cfg.seed, epoch)
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches.pop()  # a batch of one breaks batch norm; the order changes every epoch
        losses = []
        for b, pos in enumerate(batches):
            pos = np.sort(pos)
            x = torch.from_numpy(np.ascontiguousarray(images[train_rows[pos]])).to(device)
            gen = torch.Generator(device=device)
            gen.manual_seed(derive_seed(cfg.seed, epoch, b))
            torch.manual_seed(derive_seed(cfg.seed, epoch, b, 1))
            with torch.no_grad():
                x = augment.to_model_input(augment.augment_batch(x, aug_cfg, gen), mean, std)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x).float().reshape(-1)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y_all[pos].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        val_auc = float(roc_auc_score(val_y, predict(model, images, val_rows, mean, std,
                                                     cfg.image_size, cfg.eval_batch_size, use_amp)))
        history.append({"epoch": epoch + 1, "train_loss": float(torch.stack(losses).mean()),
                         "val_auc": val_auc})
        if val_auc > best[0]:
            best = (val_auc, {k: v.detach().to("cpu", copy=True)
                              for k, v in model.state_dict().items()}, epoch + 1)
    model.load_state_dict(best[1])
    if save_model is not None:
        models._atomic_save(best[1], save_model)
    scores = predict(model, images, test_rows, mean, std, cfg.image_size, cfg.eval_batch_size,
                     use_amp)
    if not return_history:
        return scores
    hist = pd.DataFrame(history)
    hist["best"] = hist["epoch"] == best[2]
    return scores, hist
