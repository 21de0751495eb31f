"""What every training and scoring loop shares: where it runs and how its batches arrive.

- ``resolve_device``: the one device default (``"auto"`` = cuda when available, else cpu).
- ``use_amp`` / ``precision`` / ``use_channels_last``: the ``amp`` and ``channels_last`` settings
  of the configs (``amp="auto"``: bf16 where the device has bf16 matrix units, CUDA or AMX).
- ``adam``: Adam with the fused single-kernel update on CPU and CUDA (``optim.DenseAdam``).
- ``check_images`` / ``check_norm``: the uint8 image cache, its row indices and mean/std.
- ``load_batch`` / ``ordered_batches`` / ``model_inputs``: uint8 batches read from the cache
  (the next one in a background thread, pinned on CUDA), resized and normalised for a model.
"""

from __future__ import annotations

import hashlib
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import nn

from mocoxr import augment, optim

DEFAULT_DEVICE = "auto"  # the default of every ``device`` parameter: cuda when available, else cpu


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None -> cuda when available, else cpu; anything else as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def has_bf16_units(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: CUDA, or a CPU with AMX tiles
    (Intel Sapphire Rapids and later; oneDNN then runs convolutions on AMX). CPUs without
    them (AVX2, or AVX-512 alone) would emulate bf16, slower than fp32."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check and check())


def use_amp(setting: str, device: torch.device) -> bool:
    """``auto``: bf16 autocast where the device has bf16 matrix units (:func:`has_bf16_units`:
    CUDA, AMX CPUs), fp32 elsewhere; ``bf16``: always; ``off``: never."""
    if setting not in ("auto", "bf16", "off"):
        raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {setting!r}")
    return setting == "bf16" or (setting == "auto" and has_bf16_units(device))


def precision(setting: str, device: str | torch.device) -> str:
    """The arithmetic an ``amp`` setting resolves to on ``device``: ``"bf16"`` or ``"fp32"``.
    It goes into every cache key of a trained model, so a run folder moved between machines
    with and without bf16 units never reuses a model trained in the other precision."""
    return "bf16" if use_amp(setting, resolve_device(device)) else "fp32"


def use_channels_last(setting: str, device: torch.device) -> bool:
    """``auto``: on for CUDA (tensor cores) and CPU (oneDNN's NHWC convolutions), off elsewhere."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"channels_last must be 'auto', 'on' or 'off', got {setting!r}")
    return setting == "on" or (setting == "auto" and device.type in ("cuda", "cpu"))


def is_channels_last(model: nn.Module) -> bool:
    """Whether the model's first convolution weight is stored channels-last."""
    w = next((p for p in model.parameters() if p.dim() == 4), None)
    return w is not None and w.is_contiguous(memory_format=torch.channels_last) \
        and not w.is_contiguous()


def adam(params: Iterable, lr: float, weight_decay: float,
         device: torch.device) -> optim.DenseAdam:
    """Adam (parameters or parameter groups) with the fused single-kernel update on CPU and CUDA,
    applied to channels-last weights in place (``optim.DenseAdam``); the maths is Adam's. On the
    2-core CPU an update of a ResNet18's parameters took 17 ms fused against 63-145 ms
    per-tensor with one thread (13 against 40-86 ms with two)."""
    return optim.DenseAdam(params, lr=lr, weight_decay=weight_decay,
                           fused=device.type in ("cpu", "cuda") or None)


def check_images(images: np.ndarray, rows: np.ndarray, name: str = "rows") -> np.ndarray:
    """``rows`` as int64 after checking them against the uint8 (N, H, W) image cache."""
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


def check_norm(mean: float, std: float) -> None:
    """Mean and std (in [0, 1] units) must be finite, std > 0."""
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ValueError(f"mean and std must be finite with std > 0, got mean={mean}, std={std}")


def rows_sha1(rows: np.ndarray) -> str:
    """SHA-1 of an int64 row-index array (what a checkpoint or feature cache was computed on)."""
    return hashlib.sha1(rows.tobytes()).hexdigest()


def load_batch(images: np.ndarray, idx: np.ndarray, pin: bool, in_order: bool = False) -> torch.Tensor:
    """uint8 (B, H, W) tensor of the given cache rows, pinned when ``pin``; read in sorted
    order (memmap friendly) unless ``in_order``."""
    x = torch.from_numpy(np.ascontiguousarray(images[idx if in_order else np.sort(idx)]))
    return x.pin_memory() if pin else x


def ordered_batches(images: np.ndarray, rows: np.ndarray, batch_size: int,
                    device: torch.device) -> Iterator[torch.Tensor]:
    """uint8 (B, 1, H, W) batches of ``rows`` in order, on ``device``; the next one is read
    (and pinned, on CUDA) in a background thread while the caller uses this one."""
    pin = device.type == "cuda"
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load_batch, images, batches[0], pin, True) if batches else None
        for j in range(len(batches)):
            x = pending.result().to(device, non_blocking=True)
            if j + 1 < len(batches):
                pending = pool.submit(load_batch, images, batches[j + 1], pin, True)
            yield x.unsqueeze(1)


def model_inputs(images: np.ndarray, rows: np.ndarray, mean: float, std: float, image_size: int,
                 batch_size: int, device: torch.device, nhwc: bool) -> Iterator[torch.Tensor]:
    """Float (B, 3, S, S) model inputs of ``rows`` in order: resized to ``image_size``, no
    augmentation, normalised with ``mean``/``std``; channels-last when ``nhwc``."""
    for x in ordered_batches(images, rows, batch_size, device):
        x = augment.to_model_input(augment.resize_batch(x, image_size), mean, std)
        yield x.contiguous(memory_format=torch.channels_last) if nhwc else x
