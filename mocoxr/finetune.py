"""End-to-end fine-tuning (the paper's second evaluation): a one-logit head on a backbone,
every layer trained with Adam on augmented labelled batches, the epoch with the best validation
AUC kept.

- ``FinetuneConfig``: the settings (paper sec. 3: Adam lr 1e-4, batch 16, epochs by
  ``probe.probe_epochs``).
- ``finetune_schedule``: the paper's image passes (epochs x labelled images) as optimizer steps,
  never fewer than ``min_steps`` (small label fractions get smaller batches, not fewer steps).
- ``replace_head``: a torchvision model's classifier swapped for a seeded ``Linear(D, 1)``.
- ``finetune_step``: one step (augment, forward, BCE loss, backward, Adam), seeded by
  (seed, epoch, batch).
- ``finetune``: the loop (validation at ``n_evals`` evenly spaced steps, the best kept);
  ``predict``: sigmoid scores of a one-logit model on cache rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm.auto import tqdm

from mocoxr import augment, models, runtime
from mocoxr.pretrain import derive_seed, epoch_order
from mocoxr.probe import probe_epochs


@dataclass
class FinetuneConfig:
    """End-to-end fine-tuning settings (paper sec. 3: Adam lr 1e-4, batch 16, epochs by
    :func:`probe.probe_epochs`, capped here by ``max_epochs``; model selected by validation AUC).
    The epochs are counted in image passes (:func:`finetune_schedule`)."""

    image_size: int = 320
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_epochs: int | None = None     # ours: cap on probe_epochs(label_fraction) (CPU budgets)
    label_fraction: float = 1.0       # sets the epoch count through probe_epochs
    seed: int = 0
    device: str = runtime.DEFAULT_DEVICE
    augment: dict = field(default_factory=dict)  # overrides of augment.AugmentConfig fields
    eval_batch_size: int = 64
    amp: str = "auto"
    channels_last: str = "auto"       # as PretrainConfig.channels_last
    head_warmup_epochs: int = 0       # ours: the first N epochs train the new head alone, the
                                      # encoder frozen in eval mode (LP-FT, Kumar et al. 2022)
    encoder_lr_scale: float = 1.0     # ours: encoder lr = lr x this; the head keeps lr
    min_steps: int = 100              # ours: fewest optimizer steps, whatever the label fraction
    min_batch: int = 4                # ours: smallest batch the schedule may choose
    n_evals: int = 5                  # ours: validation points, evenly spaced over the steps


def replace_head(model: nn.Module, seed: int) -> nn.Module:
    """Swap a torchvision model's classifier for a seeded Linear(D, 1)."""
    attr = models.head_name(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        setattr(model, attr, nn.Linear(models.feature_dim(model), 1))
    return model


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, rows: np.ndarray, mean: float, std: float,
            image_size: int, batch_size: int = 64, use_amp: bool | None = None) -> np.ndarray:
    """Sigmoid scores of a one-logit model on cache rows (eval mode, no augmentation), in bf16
    autocast when ``use_amp`` (None: where ``amp="auto"`` would, so a kept model scores
    exactly as it did when it was fine-tuned)."""
    device = next(model.parameters()).device
    if use_amp is None:
        use_amp = runtime.use_amp("auto", device)
    model.eval()
    out = []
    nhwc = runtime.is_channels_last(model)  # inputs in the model's own memory format
    for x in runtime.model_inputs(images, rows, mean, std, image_size, batch_size, device, nhwc):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out.append(torch.sigmoid(model(x).float().reshape(-1)).cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def finetune_optimizer(model: nn.Module, cfg: FinetuneConfig,
                       device: torch.device) -> torch.optim.Adam:
    """Adam with two groups: the new head at ``cfg.lr``, the encoder at ``lr x encoder_lr_scale``."""
    if cfg.head_warmup_epochs < 0 or not cfg.encoder_lr_scale > 0:
        raise ValueError("head_warmup_epochs must be >= 0 and encoder_lr_scale > 0, got "
                         f"{cfg.head_warmup_epochs} and {cfg.encoder_lr_scale}")
    head_ids = {id(p) for p in getattr(model, models.head_name(model)).parameters()}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    head = [p for p in model.parameters() if id(p) in head_ids]
    groups = [{"params": body, "lr": cfg.lr * cfg.encoder_lr_scale}, {"params": head, "lr": cfg.lr}]
    return runtime.adam(groups, cfg.lr, cfg.weight_decay, device)


def finetune_step(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: FinetuneConfig,
                  epoch: int, batch: int, x: torch.Tensor, y: torch.Tensor, mean: float,
                  std: float) -> torch.Tensor:
    """One step on uint8 images ``x`` (B, H, W) and 0/1 float labels ``y`` on the model's
    device, its draws seeded by (seed, epoch, batch); returns the detached BCE loss."""
    device = x.device
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(cfg.seed, epoch, batch))
    torch.manual_seed(derive_seed(cfg.seed, epoch, batch, 1))
    aug = augment.AugmentConfig(out_size=cfg.image_size, **cfg.augment)
    with torch.no_grad():
        x = augment.to_model_input(augment.augment_batch(x, aug, gen), mean, std)
    if runtime.use_channels_last(cfg.channels_last, device):
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16,
                        enabled=runtime.use_amp(cfg.amp, device)):
        logits = model(x).float().reshape(-1)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def _check_labels(images: np.ndarray, rows: np.ndarray, y: np.ndarray,
                  name: str) -> tuple[np.ndarray, np.ndarray]:
    rows, y = runtime.check_images(images, rows, f"{name}_rows"), np.asarray(y)
    if len(rows) != len(y) or not np.isin(y, (0, 1)).all() or len(np.unique(y)) != 2:
        raise ValueError(f"{name}: need one 0/1 label per row and both classes, got "
                         f"{len(rows)} rows, {len(y)} labels, values {np.unique(y)[:5]}")
    return rows, y


def finetune_epochs(cfg: FinetuneConfig) -> int:
    """``probe_epochs(cfg.label_fraction)``, capped by ``cfg.max_epochs``."""
    epochs = probe_epochs(cfg.label_fraction)
    if cfg.max_epochs is not None:
        epochs = min(epochs, int(cfg.max_epochs))
    if epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {cfg.max_epochs}")
    return epochs


def finetune_schedule(cfg: FinetuneConfig, n_train: int) -> tuple[int, int]:
    """``(batch size, optimizer steps)`` for ``n_train`` labelled images.

    The paper trains ``finetune_epochs(cfg)`` epochs; we keep its number of image passes,
    ``epochs x n_train``, and spread it over at least ``cfg.min_steps`` steps: the batch is
    ``cfg.batch_size``, made smaller (not below ``cfg.min_batch``) when the passes would
    otherwise fill fewer steps. With 2 labelled images and 500 epochs that is 100 steps of 10
    (each image augmented five times per batch) rather than 500 steps of 2.
    """
    if n_train < 1 or cfg.min_steps < 0 or cfg.min_batch < 2 or cfg.n_evals < 1:
        raise ValueError(f"need n_train >= 1, min_steps >= 0, min_batch >= 2 and n_evals >= 1, "
                         f"got {n_train}, {cfg.min_steps}, {cfg.min_batch}, {cfg.n_evals}")
    passes = finetune_epochs(cfg) * int(n_train)
    batch = cfg.batch_size
    if cfg.min_steps and passes < cfg.min_steps * batch:
        batch = max(cfg.min_batch, min(batch, passes // cfg.min_steps))
    return batch, max(cfg.min_steps, math.ceil(passes / batch))


def batch_positions(n_train: int, batch: int, steps: int, seed: int) -> np.ndarray:
    """``(steps, batch)`` positions into the training rows: seeded epoch orders
    (``pretrain.epoch_order``) laid end to end, so every image is seen once per pass and a
    batch larger than the set holds some images twice (each copy augmented on its own)."""
    need, orders, epoch = steps * batch, [], 0
    while epoch * n_train < need:
        orders.append(epoch_order(n_train, seed, epoch))
        epoch += 1
    return np.concatenate(orders)[:need].reshape(steps, batch)


def eval_steps(steps: int, n_evals: int) -> list[int]:
    """The steps (1-based) after which validation runs: ``n_evals`` evenly spaced, the last one
    always included."""
    return sorted({max(1, round(steps * (i + 1) / n_evals)) for i in range(n_evals)})


def _set_trainable(model: nn.Module, head: nn.Module, warmup: bool) -> None:
    """Everything trains; during the head warm-up only the head (BatchNorm statistics frozen)."""
    model.train(not warmup)
    head.train()
    for p in model.parameters():
        p.requires_grad_(not warmup)
    for p in head.parameters():
        p.requires_grad_(True)


def _train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: FinetuneConfig,
                 positions: np.ndarray, first: int, images: np.ndarray, rows: np.ndarray,
                 y: torch.Tensor, mean: float, std: float, device: torch.device) -> float:
    """Steps ``first, first + 1, ...`` on the batches ``positions`` (rows of positions into
    ``rows``), each seeded by (seed, step); returns the mean training loss."""
    losses = []
    for i, pos in enumerate(positions):
        x = torch.from_numpy(np.ascontiguousarray(images[rows[pos]])).to(device)
        losses.append(finetune_step(model, optimizer, cfg, 0, first + i, x, y[pos].to(device),
                                    mean, std))
    return float(torch.stack(losses).mean())


def finetune(backbone: str, init: str, images: np.ndarray, train_rows: np.ndarray,
             train_y: np.ndarray, val_rows: np.ndarray, val_y: np.ndarray,
             test_rows: np.ndarray, mean: float, std: float, cfg: FinetuneConfig,
             progress: bool = False,
             save_model: str | Path | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """End-to-end fine-tuning of a torchvision backbone with a one-logit head.

    ``init``: ``random``, ``imagenet`` or a checkpoint / exported state dict path
    (``models.create_backbone``). Adam (``cfg.lr``) for the steps of :func:`finetune_schedule`
    on augmented batches (seeded by (seed, step)), validation AUC at :func:`eval_steps`; the
    best point's weights score the test rows (and are written to ``save_model`` when given: the
    torchvision state dict with a 1-output head). Returns ``(test scores, history
    DataFrame[step, epoch, batch_size, train_loss, val_auc, best])``; ``epoch`` counts image
    passes over the training rows.
    """
    train_rows, train_y = _check_labels(images, train_rows, train_y, "train")
    val_rows, val_y = _check_labels(images, val_rows, val_y, "val")
    test_rows = runtime.check_images(images, test_rows, "test_rows")
    runtime.check_norm(mean, std)
    if cfg.batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (batch norm), got {cfg.batch_size}")
    batch, steps = finetune_schedule(cfg, len(train_rows))
    positions = batch_positions(len(train_rows), batch, steps, cfg.seed)
    warm = math.ceil(cfg.head_warmup_epochs * len(train_rows) / batch)
    device = runtime.resolve_device(cfg.device)
    use_amp = runtime.use_amp(cfg.amp, device)
    nhwc = runtime.use_channels_last(cfg.channels_last, device)
    model = replace_head(models.create_backbone(backbone, init=init, seed=cfg.seed), cfg.seed)
    model = model.to(device)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)
    optimizer = finetune_optimizer(model, cfg, device)
    y_all = torch.as_tensor(train_y, dtype=torch.float32)
    head = getattr(model, models.head_name(model))
    history, best, done = [], (-1.0, None, 0), 0
    for end in tqdm(eval_steps(steps, cfg.n_evals), disable=not progress,
                    desc=f"fine-tune {backbone}/{init}"):
        losses = []
        for phase_end in sorted({min(max(warm, done), end), end}):  # warm-up, then everything
            if phase_end > done:
                _set_trainable(model, head, done < warm)
                losses.append(_train_steps(model, optimizer, cfg, positions[done:phase_end], done,
                                           images, train_rows, y_all, mean, std, device))
                done = phase_end
        val_auc = float(roc_auc_score(val_y, predict(model, images, val_rows, mean, std,
                                                     cfg.image_size, cfg.eval_batch_size, use_amp)))
        history.append({"step": end, "epoch": end * batch / len(train_rows),
                        "batch_size": batch, "train_loss": float(np.mean(losses)),
                        "val_auc": val_auc})
        if val_auc > best[0]:
            best = (val_auc, {k: v.detach().to("cpu", copy=True)
                              for k, v in model.state_dict().items()}, end)
    model.load_state_dict(best[1])
    if save_model is not None:
        models._atomic_save(best[1], save_model)
    scores = predict(model, images, test_rows, mean, std, cfg.image_size, cfg.eval_batch_size,
                     use_amp)
    hist = pd.DataFrame(history)
    hist["best"] = hist["step"] == best[2]
    return scores, hist
