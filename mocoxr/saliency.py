"""Saliency maps of one-logit torchvision classifiers, how well a map points at a known
region, and whether a map depends on the model's weights at all.

- Grad-CAM (Selvaraju et al., ICCV 2017): a block's activations ``A`` weighted by the spatial
  mean of the logit's gradient with respect to them, summed over channels, ReLU, upsampled
  (bilinear) to the input size and scaled to [0, 1] per image. The block (:func:`cam_layer`):
  **the deepest block whose output has at least 8 x 8 cells at the input size**, so that the map
  can tell a lung base from a lung apex (ResNet18: ``layer4`` at 320 px, ``layer2`` at 64 px,
  ``layer1`` at 32 px).
- Occlusion sensitivity (Zeiler & Fergus, ECCV 2014): slide a gray patch (the dataset mean)
  over the image and record the drop in the logit; a pixel gets the mean drop of the patches
  covering it. Model-agnostic: it needs only forward passes.
- Scores against a ground-truth region (a boolean mask per image, e.g.
  ``phantom.effusion_masks``): pointing game (the map's maximum lies inside the region) and
  share inside (the map's mass inside, ``sum(map * mask) / sum(map)``; a uniform map scores
  the region's share of the image).
- Cascading randomisation (Adebayo et al., NeurIPS 2018): re-initialise the model's blocks from
  the top down, one more per step, and compare each step's maps with the original ones by rank
  (Spearman) correlation. A map that stays the same with random weights does not explain the
  model.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from mocoxr import augment, models

__all__ = ["MIN_CELLS", "block_grids", "cam_layer", "target_layer", "grad_cam", "grad_cam_rows",
           "occlusion", "model_inputs", "pointing_game", "share_inside", "localisation_table",
           "cascade_blocks", "rank_correlation", "cascading_randomisation", "plot_cams",
           "plot_randomisation", "phantom_masks"]

MIN_CELLS = 8  # the Grad-CAM block's output must have at least this many cells per side
# candidate Grad-CAM blocks, shallow to deep, by the classifier's attribute name
CAM_BLOCKS = {"fc": ("layer1", "layer2", "layer3", "layer4"),
              "classifier": ("features.denseblock1", "features.denseblock2",
                             "features.denseblock3", "features")}


def target_layer(model: nn.Module) -> nn.Module:
    """The last block: ``layer4`` (ResNet), ``features`` (DenseNet)."""
    return model.get_submodule(CAM_BLOCKS[models.head_name(model)][-1])


def block_grids(model: nn.Module, image_size: int) -> dict[str, tuple[int, int]]:
    """Output grid (rows, columns) of each candidate Grad-CAM block, shallow to deep, for a
    square input of ``image_size`` pixels (one forward pass of a zero image, in eval mode)."""
    names = CAM_BLOCKS[models.head_name(model)]  # raises for other architectures
    grids: dict[str, tuple[int, int]] = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: grids.__setitem__(n, tuple(o.shape[-2:]))) for n in names]
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, 3, image_size, image_size, device=p.device, dtype=p.dtype))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return {n: grids[n] for n in names}


def cam_layer(model: nn.Module, image_size: int,
              min_cells: int = MIN_CELLS) -> tuple[str, tuple[int, int]]:
    """The Grad-CAM block and its grid: the deepest candidate block whose output has at least
    ``min_cells`` cells on each side at ``image_size`` (the shallowest block when none has)."""
    grids = block_grids(model, image_size)
    fine = [n for n, g in grids.items() if min(g) >= min_cells]
    name = fine[-1] if fine else next(iter(grids))
    return name, grids[name]


def _check_input(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"x: expected (B, 3, H, W) model input, got {tuple(x.shape)}")


def grad_cam(model: nn.Module, x: torch.Tensor, batch_size: int = 32,
             layer: nn.Module | str | None = None) -> np.ndarray:
    """Grad-CAM maps (B, H, W) in [0, 1] of a one-logit model for normalised inputs
    ``x`` (B, 3, H, W), at ``layer`` (a module or its name; default :func:`target_layer`).
    The model is put in eval mode; its parameters get no gradients."""
    _check_input(x)
    model.eval()
    if isinstance(layer, str):
        layer = model.get_submodule(layer)
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


def model_inputs(images: np.ndarray, mean: float, std: float, image_size: int) -> torch.Tensor:
    """uint8 images (N, S, S) -> normalised model input (N, 3, size, size), as for evaluation."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    return augment.to_model_input(augment.resize_batch(x, image_size), mean, std)


def grad_cam_rows(model: nn.Module, images: np.ndarray, rows: np.ndarray, mean: float,
                  std: float, image_size: int, layer: nn.Module | str | None = None) -> np.ndarray:
    """Grad-CAM maps of image-cache rows, preprocessed as for evaluation (no augmentation)."""
    return grad_cam(model, model_inputs(images[np.asarray(rows)], mean, std, image_size),
                    layer=layer)


def _starts(length: int, patch: int, stride: int) -> list[int]:
    """Patch positions along one side: every ``stride``, the last one flush with the edge."""
    starts = list(range(0, length - patch + 1, stride))
    return starts if starts[-1] == length - patch else starts + [length - patch]


def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.no_grad():
        out = [model(x[i:i + batch_size].to(device)).reshape(-1).float().cpu()
               for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def occlusion(model: nn.Module, x: torch.Tensor, patch: int, stride: int | None = None,
              batch_size: int = 64) -> np.ndarray:
    """Occlusion maps (B, H, W) in [0, 1] of a one-logit model for normalised inputs ``x``.

    A ``patch`` x ``patch`` square is set to 0 (the dataset mean, after normalisation) at every
    ``stride`` (default ``patch``); each pixel gets the mean drop in the logit over the squares
    covering it. The map keeps the positive part (occluding there lowers the logit: evidence
    for the finding), scaled to a maximum of 1 per image (all 0 when nothing lowers it).
    """
    _check_input(x)
    h, w = x.shape[-2:]
    stride = patch if stride is None else stride
    if not (0 < patch <= min(h, w)) or stride < 1:
        raise ValueError(f"occlusion: patch must be in 1..{min(h, w)} and stride >= 1, got "
                         f"patch={patch}, stride={stride}")
    model.eval()
    spots = [(r, c) for r in _starts(h, patch, stride) for c in _starts(w, patch, stride)]
    cover = torch.zeros(h, w)
    for r, c in spots:
        cover[r:r + patch, c:c + patch] += 1
    maps = []
    for img in x:
        base = _logits(model, img[None], 1)[0]
        copies = img.repeat(len(spots), 1, 1, 1)
        for k, (r, c) in enumerate(spots):
            copies[k, :, r:r + patch, c:c + patch] = 0
        drops = base - _logits(model, copies, batch_size)
        m = torch.zeros(h, w)
        for d, (r, c) in zip(drops, spots):
            m[r:r + patch, c:c + patch] += d
        m = (m / cover).clamp_min(0)
        maps.append(m / m.max() if m.max() > 0 else m)
    return torch.stack(maps).numpy()


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


# ----------------------------------------------------------------------------- sanity check


def cascade_blocks(model: nn.Module) -> list[tuple[str, ...]]:
    """The model's blocks from the top down (each a tuple of submodule names), in the order
    the cascading randomisation re-initialises them: head, then the deepest block first."""
    if models.head_name(model) == "fc":
        return [("fc",), ("layer4",), ("layer3",), ("layer2",), ("layer1",), ("conv1", "bn1")]
    return [("classifier",), ("features.denseblock4", "features.norm5"),
            ("features.denseblock3", "features.transition3"),
            ("features.denseblock2", "features.transition2"),
            ("features.denseblock1", "features.transition1"), ("features.conv0", "features.norm0")]


def _reinitialise(module: nn.Module, seed: int) -> None:
    """Every submodule's ``reset_parameters`` (its construction-time initialisation; batch
    norm: weight 1, bias 0, running statistics reset), drawn from torch's generator at ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation per image of two stacks of maps (N, H, W). A constant map has no
    ranking to share: its correlation is 0."""
    from scipy.stats import rankdata

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"maps {a.shape} and {b.shape} must both be (N, H, W)")
    ra = rankdata(a.reshape(len(a), -1), axis=1)
    rb = rankdata(b.reshape(len(b), -1), axis=1)
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    return np.divide((ra * rb).sum(1), den, out=np.zeros(len(a)), where=den > 0)


def cascading_randomisation(model: nn.Module, x: torch.Tensor,
                            methods: dict[str, Callable[[nn.Module, torch.Tensor], np.ndarray]],
                            seed: int = 0) -> pd.DataFrame:
    """Maps of ``x`` after re-initialising the blocks of :func:`cascade_blocks` one more at a
    time, top down (a copy of ``model``; the model itself is left alone), compared with the
    original maps. ``methods``: ``{name: f(model, x) -> maps (N, H, W)}``. Returns one row per
    (method, step, image): ``step`` (0 = original weights), ``randomised`` (the block added at
    that step, named by its first module; "none" at 0), ``spearman`` (rank correlation with
    the step-0 map)."""
    work = copy.deepcopy(model).eval()
    steps = [("none",)] + cascade_blocks(model)
    original = {name: f(work, x) for name, f in methods.items()}
    rows = []
    for k, block in enumerate(steps):
        if k:
            for name in block:
                _reinitialise(work.get_submodule(name), seed + k)
        for name, f in methods.items():
            rho = rank_correlation(original[name], f(work, x) if k else original[name])
            rows += [{"method": name, "step": k, "randomised": block[0] if k else "none",
                      "image": i, "spearman": float(r)} for i, r in enumerate(rho)]
    return pd.DataFrame(rows)


def plot_randomisation(table: pd.DataFrame, title: str | None = None):
    """Mean rank correlation with the original map (and the range over images) against the
    randomisation step, one line per method."""
    import matplotlib.pyplot as plt

    from mocoxr import plots

    plots.use_book_theme()
    fig, ax = plt.subplots(figsize=(min(7.0, plots.PAGE_WIDTH), 3.2))
    for i, (name, t) in enumerate(table.groupby("method", sort=False)):
        g = t.groupby("step")["spearman"]
        steps = np.asarray(g.mean().index)
        ax.plot(steps, g.mean().values, marker="o", color=f"C{i}", label=name)
        ax.fill_between(steps, g.min().values, g.max().values, color=f"C{i}", alpha=0.15)
    labels = table.drop_duplicates("step").sort_values("step")["randomised"]
    ax.set_xticks(range(len(labels)), ["original"] + [f"+ {b}" for b in labels.iloc[1:]],
                  rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman with original map")
    ax.set_title(title or "Cascading randomisation, top block first", fontsize=10)
    ax.legend(title="map", fontsize=8, title_fontsize=8, loc="center left",
              bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- figures


def plot_cams(images: np.ndarray, cams: dict[str, np.ndarray], masks: np.ndarray | None = None,
              titles: list[str] | None = None):
    """One row per image: the image (region outlined when ``masks``), then each map over it,
    titled by its key (e.g. ``"Grad-CAM, moco"``). ``images`` (N, H, W) in [0, 1] or uint8;
    ``cams`` ``{title: (N, H, W)}``. Drawn in the book's theme, at most ``plots.PAGE_WIDTH``
    wide."""
    import matplotlib.pyplot as plt

    from mocoxr import plots

    n, k = len(images), len(cams)
    if n == 0:
        raise ValueError("plot_cams: no images to show")
    plots.use_book_theme()
    cell = min(1.9, plots.PAGE_WIDTH / (k + 1))  # inches per panel
    fontsize = 8 if k < 4 else 7
    fig, axes = plt.subplots(n, k + 1, figsize=(cell * (k + 1), cell * n), squeeze=False)
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(images[i], cmap="gray")
        if masks is not None and masks[i].any():
            ax.contour(masks[i], levels=[0.5], colors="C3", linewidths=0.8)
        ax.set_title(titles[i] if titles else "image", fontsize=fontsize)
        for j, (name, c) in enumerate(cams.items(), start=1):
            axes[i, j].imshow(images[i], cmap="gray")
            axes[i, j].imshow(c[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            if masks is not None and masks[i].any():
                axes[i, j].contour(masks[i], levels=[0.5], colors="w", linewidths=0.6)
            axes[i, j].set_title(name, fontsize=fontsize)
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
