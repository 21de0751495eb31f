"""The counterfactual test that only phantoms allow: score each image again without its effusion.

A phantom image is rendered from seeds, so it can be rendered again with every finding but
its effusion: same patient, exposure and noise (``phantom.effusion_renders``). Both versions go
through the same JPEG encoding and decoding as the images on disk, so the re-rendered original
is the cached image itself. A third version puts back the effusion region alone: the image
without effusion, with the pixels inside the region (``phantom.region_mask``, the mask the
pointing game scores against) taken from the original.

The drop in the model's logit (and probability) from the original to the image without its
effusion measures how much the decision rests on the effusion itself; the drop from the
original to the region-restored image measures what the model reads outside the region (0 when
the region holds all the evidence it uses). Real data has no such counterfactual.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from PIL import Image

__all__ = ["Counterfactuals", "counterfactual_images", "logits", "bootstrap_mean", "drop_table",
           "drop_display"]

VERSIONS = ("original", "without", "restored")


@dataclass
class Counterfactuals:
    """Per image, as the image cache holds it (uint8 ``(N, size, size)``): the ``original``,
    the image rendered ``without`` its effusion, the one with the effusion region alone
    ``restored``, and the region ``mask`` (boolean; empty for an image without effusion, whose
    three versions are the original)."""

    original: np.ndarray
    without: np.ndarray
    restored: np.ndarray
    mask: np.ndarray

    def take(self, index: np.ndarray) -> "Counterfactuals":
        """The images at ``index`` (a boolean mask or positions)."""
        return Counterfactuals(self.original[index], self.without[index],
                               self.restored[index], self.mask[index])


def _as_cached(img: np.ndarray, size: int, quality: int, folder: Path) -> np.ndarray:
    """The image as the cache would hold it: written as the tree writes it (JPEG at the
    population's quality), decoded by ``data.decode_image``."""
    from mocoxr import data

    path = folder / "image.jpg"
    Image.fromarray(img, "L").save(path, format="JPEG", quality=quality)
    return data.decode_image(path, size)


def counterfactual_images(chexpert_folder: str | Path, paths: Sequence[str],
                          size: int) -> Counterfactuals:
    """The three versions of each phantom image (absolute ``paths`` of a manifest whose
    CheXpert-format folder is ``chexpert_folder``) at the cache's ``size``."""
    from mocoxr import data, phantom
    from mocoxr.phantom import masks

    cdir = data.find_chexpert_dir(Path(chexpert_folder).resolve())
    rel = [Path(p).resolve().relative_to(cdir.parent).as_posix() for p in paths]
    quality = phantom.make_population(masks.tree_parameters(cdir)["population"]).jpeg_quality
    n = len(rel)
    out = Counterfactuals(*(np.zeros((n, size, size), np.uint8) for _ in VERSIONS),
                          mask=np.zeros((n, size, size), bool))
    with tempfile.TemporaryDirectory() as tmp:
        for i, (p, pair) in enumerate(zip(paths, masks.effusion_renders(cdir, rel))):
            if pair is None:
                out.original[i] = out.without[i] = out.restored[i] = data.decode_image(p, size)
                continue
            out.original[i], out.without[i] = (_as_cached(a, size, quality, Path(tmp))
                                               for a in pair)
            out.mask[i] = masks.region_mask(*pair, size)
            out.restored[i] = np.where(out.mask[i], out.original[i], out.without[i])
    return out


def logits(model: nn.Module, images: np.ndarray, mean: float, std: float, image_size: int,
           batch_size: int = 64) -> np.ndarray:
    """The one-logit model's logits for uint8 images ``(N, S, S)``, preprocessed and in the
    precision of evaluation (``finetune.predict``)."""
    from mocoxr import runtime, saliency

    model.eval()
    device = next(model.parameters()).device
    amp = runtime.use_amp("auto", device)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = saliency.model_inputs(images[i:i + batch_size], mean, std, image_size)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out.append(model(x.to(device)).reshape(-1).float().cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def bootstrap_mean(x: np.ndarray, n_boot: int = 1000, seed: int = 0,
                   alpha: float = 0.05) -> tuple[float, float, float]:
    """The mean of ``x`` with a percentile bootstrap CI over its items."""
    x = np.asarray(x, np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"bootstrap_mean: expected a non-empty 1-d array, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), (n_boot, len(x)))].mean(1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(x.mean()), float(lo), float(hi)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def drop_table(scores: dict[tuple[str, float], dict[str, np.ndarray]], n_boot: int = 1000,
               seed: int = 0) -> pd.DataFrame:
    """One row per (init, label fraction): images, mean probability of each version, and the
    mean drops with 95% bootstrap CIs (same resamples for every model): ``drop_prob``/
    ``drop_logit`` (original minus without effusion) and ``restored_drop_prob`` (original minus
    region restored). ``scores``: ``{(init, fraction): {version: logits (N,)}}``."""
    rows = []
    for (init, f), s in scores.items():
        z = {v: np.asarray(s[v], np.float64) for v in VERSIONS}
        p = {v: _sigmoid(z[v]) for v in VERSIONS}
        row = {"init": init, "label_fraction": float(f), "images": len(z["original"])}
        row.update({f"p_{v}": float(p[v].mean()) for v in VERSIONS})
        for name, d in (("drop_prob", p["original"] - p["without"]),
                        ("drop_logit", z["original"] - z["without"]),
                        ("restored_drop_prob", p["original"] - p["restored"])):
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = bootstrap_mean(d, n_boot, seed)
        rows.append(row)
    return pd.DataFrame(rows)


def drop_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`drop_table` for the page: one string column per number, CIs in brackets."""
    from mocoxr import tables

    rows = [r for _, r in table.iterrows()]

    def ci(column: str) -> list[str]:
        return [tables.fmt_ci(r[column], r[f"{column}_lo"], r[f"{column}_hi"], signed=True)
                for r in rows]

    return pd.DataFrame({
        "init": table["init"], "labels": [tables.pct(f) for f in table["label_fraction"]],
        "images": table["images"],
        "P(original)": table["p_original"].map("{:.3f}".format),
        "P(no effusion)": table["p_without"].map("{:.3f}".format),
        "drop in P [95% CI]": ci("drop_prob"),
        "drop in logit [95% CI]": ci("drop_logit"),
        "P(region restored)": table["p_restored"].map("{:.3f}".format),
        "drop, region restored [95% CI]": ci("restored_drop_prob"),
    })
