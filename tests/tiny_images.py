"""Tiny learnable images shared by the pretrain, probe and fine-tune tests (32 px, CPU)."""

from __future__ import annotations

import numpy as np

MEAN, STD = 0.5, 0.25  # the normalisation the tests pass for these images


def tiny_images(n: int, seed: int = 0, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images; label-1 images carry a bright block at the bottom (learnable)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    img = rng.integers(0, 160, (n, size, size), dtype=np.uint8)
    img[y == 1, size // 2:, : size // 2] = 250
    return img, y
