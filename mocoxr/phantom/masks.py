"""Ground truth for saliency: where a phantom image shows its effusion.

The images of a tree are rendered again from their seeds with and without the effusion (the
renderer keeps patient, exposure and noise fixed across findings); nothing on disk changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from mocoxr.phantom.population import make_population
from mocoxr.phantom.records import sample_chexpert_records
from mocoxr.phantom.render import render_radiograph
from mocoxr.phantom.trees import SIDECAR

EFFUSION_KEYS = ("effusion_right", "effusion_left")


def tree_parameters(chexpert_dir: str | os.PathLike) -> dict:
    """The parameters a phantom tree was written with (its ``phantom.json``)."""
    sidecar = Path(chexpert_dir) / SIDECAR
    if not sidecar.is_file():
        raise FileNotFoundError(f"{sidecar} not found: effusion masks exist only for phantom "
                                "trees written by mocoxr.phantom.generate_chexpert_tree")
    return json.loads(sidecar.read_text())


def effusion_renders(chexpert_dir: str | os.PathLike,
                     rel_paths: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """Per image of a phantom tree: ``(with, without)`` its effusion, rendered again from its
    seeds at the tree's size (uint8, before JPEG), or None for an image without an effusion.
    The renderer keeps patient, exposure and noise fixed across findings, so the two differ by
    the effusion alone. ``rel_paths`` as in the tree's CSVs (``CheXpert-v1.0-small/valid/...``).
    """
    params = tree_parameters(chexpert_dir)
    pop, hw = make_population(params["population"]), tuple(params["image_size"])
    splits = {p.split("/")[1] if p.count("/") > 1 else "" for p in rel_paths}
    records: dict[str, dict] = {}
    for split, n in (("train", params["n_patients"]), ("valid", params["n_valid_patients"])):
        if split in splits:
            records.update({r["path"]: r for r in sample_chexpert_records(n, params["seed"], split, pop)})
    out: list[tuple[np.ndarray, np.ndarray] | None] = []
    for p in rel_paths:
        if p not in records:
            raise ValueError(f"{p} is not an image of the phantom tree {chexpert_dir}")
        r = records[p]
        if not any(r["findings"].get(k, 0.0) > 0 for k in EFFUSION_KEYS):
            out.append(None)
            continue
        dry = {k: v for k, v in r["findings"].items() if k not in EFFUSION_KEYS}
        a, b = (render_radiograph(np.random.default_rng(r["image_seed"]), hw, f,
                                  view=r["view"].lower(), projection=r["projection"],
                                  supine=r["supine"], female=r["female"],
                                  anatomy_seed=r["anatomy_seed"], population=pop)
                for f in (r["findings"], dry))
        out.append((a, b))
    return out


def region_mask(with_: np.ndarray, without: np.ndarray, size: int, threshold: int = 8) -> np.ndarray:
    """Where two renders differ by at least ``threshold`` gray levels, resized and centre-cropped
    to ``size`` as the image cache does (boolean ``(size, size)``)."""
    diff = (np.abs(with_.astype(np.int16) - without.astype(np.int16)) >= threshold).astype(np.uint8)
    im = Image.fromarray(diff * 255, "L")
    w, h = im.size
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, box=box)) >= 128


def effusion_masks(chexpert_dir: str | os.PathLike, rel_paths: Sequence[str], size: int,
                   threshold: int = 8) -> np.ndarray:
    """Boolean (N, size, size) masks of where each phantom image shows its effusion.

    ``chexpert_dir``: a tree written by :func:`generate_chexpert_tree` (its ``phantom.json``
    gives the parameters); ``rel_paths``: image paths as in its CSVs
    (``CheXpert-v1.0-small/valid/...``). Each image is rendered again from the same seeds with
    and without its effusion (:func:`effusion_renders`), and the mask is where the two differ by
    at least ``threshold`` gray levels, then resized and centre-cropped to ``size`` as the image
    cache does (:func:`region_mask`). Images without an effusion get an empty mask. Nothing is
    written: the tree's images are left as they are.
    """
    out = np.zeros((len(rel_paths), size, size), bool)
    for i, pair in enumerate(effusion_renders(chexpert_dir, rel_paths)):
        if pair is not None:
            out[i] = region_mask(*pair, size, threshold)
    return out
