"""Grad-CAM for one-logit torchvision classifiers, and how well a map points at a known region.

Grad-CAM (Selvaraju et al., ICCV 2017): the last convolutional block's activations ``A``
(ResNet ``layer4``, DenseNet ``features``) weighted by the spatial mean of the logit's gradient
with respect to them, summed over channels, ReLU, upsampled (bilinear) to the input size and
scaled to [0, 1] per image.

Scores against a ground-truth region (a boolean mask per image, e.g.
``phantom.effusion_masks``):

- pointing game: the map's maximum lies inside the region;
- share inside: the map's mass inside the region, ``sum(cam * mask) / sum(cam)``, next to the
  region's share of the image (what a uniform map scores).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from mocoxr import augment, models

__all__ = ["target_layer", "grad_cam", "pointing_game", "share_inside", "localisation_table"]


def target_layer(model: nn.Module) -> nn.Module:
    """The block whose output Grad-CAM weighs: ``layer4`` (ResNet), ``features`` (DenseNet)."""
    name = models.head_name(model)  # raises for other architectures
    return model.layer4 if name == "fc" else model.features


def grad_cam(model: nn.Module, x: torch.Tensor, batch_size: int = 32,
             layer: nn.Module | None = None) -> np.ndarray:
    """Grad-CAM maps (B, H, W) in [0, 1] of a one-logit model for normalised inputs
    ``x`` (B, 3, H, W), at ``layer`` (default :func:`target_layer`). The model is put in eval
    mode; its parameters get no gradients."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x: expected (B, 3, H, W) model input, got {tuple(x.shape)}")
    model.eval()
    layer, store = layer if layer is not None else target_layer(model), {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    maps = []
    try:
        for start in range(0, len(x), batch_size):
            xb = x[start:start + batch_size].to(next(model.parameters()).device)
            xb = xb.detach().requires_grad_(True)  # activations need grad even if frozen
            with torch.enable_grad():
                logits = model(xb).reshape(len(xb), -1)
                if logits.shape[1] != 1:
                    raise ValueError(f"expected a one-logit model, got {logits.shape[1]} outputs")
                act = store["a"]
                grad, = torch.autograd.grad(logits.sum(), act)
            cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1, keepdim=True))
            cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
            peak = cam.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None, None]
            maps.append((cam / peak)[:, 0].detach().cpu())
    finally:
        handle.remove()
    return torch.cat(maps).numpy()


def grad_cam_rows(model: nn.Module, images: np.ndarray, rows: np.ndarray, mean: float,
                  std: float, image_size: int) -> np.ndarray:
    """Grad-CAM maps of image-cache rows, preprocessed as for evaluation (no augmentation)."""
    x = torch.from_numpy(np.ascontiguousarray(images[np.asarray(rows)]))
    x = augment.to_model_input(augment.resize_batch(x, image_size), mean, std)
    return grad_cam(model, x)


def _check(cams: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cams, masks = np.asarray(cams, np.float64), np.asarray(masks, bool)
    if cams.shape != masks.shape or cams.ndim != 3:
        raise ValueError(f"cams {cams.shape} and masks {masks.shape} must both be (N, H, W)")
    if not masks.reshape(len(masks), -1).any(1).all():
        raise ValueError("every mask must hold part of the region (drop images without one)")
    return cams, masks


def pointing_game(cams: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: whether the map's maximum (first one if tied) lies inside the region."""
    cams, masks = _check(cams, masks)
    flat = cams.reshape(len(cams), -1)
    return masks.reshape(len(masks), -1)[np.arange(len(cams)), flat.argmax(1)]


def share_inside(cams: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: the share of the map's mass inside the region (0 for an all-zero map)."""
    cams, masks = _check(cams, masks)
    total = cams.sum(axis=(1, 2))
    inside = (cams * masks).sum(axis=(1, 2))
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


def localisation_table(cams: dict[str, np.ndarray], masks: np.ndarray) -> pd.DataFrame:
    """One row per init: images, pointing-game hit rate, mean share inside, region area."""
    area = float(np.asarray(masks, bool).mean())
    rows = [{"init": name, "images": len(c), "pointing_hit_rate": float(pointing_game(c, masks).mean()),
             "share_inside": float(share_inside(c, masks).mean()), "region_area": area}
            for name, c in cams.items()]
    return pd.DataFrame(rows)


def plot_cams(images: np.ndarray, cams: dict[str, np.ndarray], masks: np.ndarray | None = None,
              titles: list[str] | None = None):
    """One row per image: the image (region outlined when ``masks``), then each init's map
    over it. ``images`` (N, H, W) in [0, 1] or uint8; ``cams`` ``{init: (N, H, W)}``. Drawn
    in the book's theme, at most ``plots.PAGE_WIDTH`` wide."""
    import matplotlib.pyplot as plt

    from mocoxr import plots

    n, k = len(images), len(cams)
    if n == 0:
        raise ValueError("plot_cams: no images to show")
    plots.use_book_theme()
    cell = min(1.9, plots.PAGE_WIDTH / (k + 1))  # inches per panel
    fig, axes = plt.subplots(n, k + 1, figsize=(cell * (k + 1), cell * n), squeeze=False)
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(images[i], cmap="gray")
        if masks is not None and masks[i].any():
            ax.contour(masks[i], levels=[0.5], colors="C3", linewidths=0.8)
        ax.set_title(titles[i] if titles else "image", fontsize=8)
        for j, (name, c) in enumerate(cams.items(), start=1):
            axes[i, j].imshow(images[i], cmap="gray")
            axes[i, j].imshow(c[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if masks is not None and masks[i].any():
                axes[i, j].contour(masks[i], levels=[0.5], colors="w", linewidths=0.6)
            axes[i, j].set_title(f"Grad-CAM, {name}", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def phantom_masks(chexpert_folder, paths, size: int) -> np.ndarray:
    """``phantom.effusion_masks`` for absolute image paths of a manifest whose CheXpert-format
    folder (the one holding ``CheXpert-v1.0-small/``) is ``chexpert_folder``."""
    from pathlib import Path

    from mocoxr import data, phantom

    folder = Path(chexpert_folder).resolve()
    cdir = data.find_chexpert_dir(folder)
    rel = [Path(p).resolve().relative_to(cdir.parent).as_posix() for p in paths]
    return phantom.effusion_masks(cdir, rel, size)
