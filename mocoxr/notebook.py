"""What the notebooks call: their data folders and datasets, the pretraining folder, the k-NN
monitor, and the numbers they glue into the prose.

The notebooks share one run folder (:func:`run_paths`); these helpers fix its layout so that
every notebook finds what the one before it left, and so that a reader who opens any notebook
first still gets a working pipeline (each step reuses what exists and builds what is missing).
The runner hashes this file with the rest of the package: editing it makes every run stale.
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mocoxr import keys, store
from mocoxr.book.paths import RunPaths, project_root, run_paths

__all__ = ["Dataset", "RunPaths", "chexpert_folder", "glue", "glue_effect", "glued_values",
           "knn_monitor", "load_dataset", "pretrain_dir", "project_root", "record_pretrained",
           "run_paths", "shenzhen_folder", "uncertain_policy_counts"]

SPEED_FIELDS = ("device", "amp", "channels_last", "compile", "monitor_every", "checkpoint_every_steps")


# ----------------------------------------------------------------------------- data


def _given_folder(folder: str | Path, what: str, parameter: str) -> Path:
    p = Path(folder).expanduser().resolve()
    if not p.exists():
        raise FileNotFoundError(f"{what} {p} ({parameter}) does not exist")
    return p


def chexpert_folder(
    run_dir: str | Path, data_dir: str | Path | None = None, phantom: dict | None = None, seed: int = 0
) -> Path:
    """The CheXpert-format folder to read: ``data_dir`` as given, or (None) the embedded synthetic
    data, generated under ``<run_dir>/data/chexpert`` by ``phantom.generate_chexpert_tree`` with
    the ``phantom`` options (the generator skips the work when the tree exists with the same ones)."""
    if data_dir is not None:
        return _given_folder(data_dir, "CheXpert data folder", "data_dir")
    from mocoxr import phantom as ph

    cdir = ph.generate_chexpert_tree(run_paths(run_dir).data / "chexpert", seed=seed, **(phantom or {}))
    return Path(cdir).parent


def shenzhen_folder(
    run_dir: str | Path, shenzhen_dir: str | Path | None = None, phantom_shenzhen: dict | None = None,
    seed: int = 0,
) -> Path:
    """The Shenzhen-format folder to read: ``shenzhen_dir`` as given, or (None) the embedded
    synthetic set generated under ``<run_dir>/data/shenzhen`` (``phantom.generate_shenzhen_tree``)."""
    if shenzhen_dir is not None:
        return _given_folder(shenzhen_dir, "Shenzhen data folder", "shenzhen_dir")
    from mocoxr import phantom as ph

    return Path(ph.generate_shenzhen_tree(run_paths(run_dir).data / "shenzhen", seed=seed,
                                          **(phantom_shenzhen or {})))


@dataclass
class Dataset:
    """A prepared manifest with its decoded images, their normalisation and size."""

    prepared: Any  # mocoxr.data.PreparedDataset
    images: Any  # (N, size, size) uint8 memmap, row i = manifest row i
    mean: float
    std: float
    fingerprint: str  # content hash of the decoded images (and the dataset's name and size)
    image_size: int  # the decoded (and model input) size in pixels

    @property
    def manifest(self):
        return self.prepared.manifest


def load_dataset(
    run_dir: str | Path,
    name: str,
    folder: str | Path,
    image_size: int,
    options: dict | None = None,
    seed: int = 0,
) -> Dataset:
    """Prepare ``chexpert`` (the pretraining/target data: CheXpert, NIH or a labels CSV) or
    ``shenzhen`` (the transfer data: Shenzhen, Montgomery or a labels CSV), in the format
    :func:`mocoxr.data.prepare_dataset` detects (manifests reused when unchanged), decode its images
    once into ``<run_dir>/cache/<name>_<size>px.npy`` and compute mean/std on the train split.
    ``options``: keyword arguments of ``data.prepare_chexpert``/``prepare_shenzhen``."""
    from mocoxr import data

    paths = run_paths(run_dir)
    if name not in data.formats.ROLES:
        raise ValueError(f"dataset name must be 'chexpert' or 'shenzhen', got {name!r}")
    prepared = data.prepare_dataset(name, folder, paths.manifests, options, seed=seed)
    images = data.load_image_cache(
        prepared.manifest["path"].tolist(), image_size, paths.cache / f"{name}_{image_size}px.npy"
    )
    mean, std = data.image_stats(images, prepared.rows("train"))
    fingerprint = keys.sha([keys.array_digest(images), name, int(image_size)])[:16]
    return Dataset(prepared, images, mean, std, fingerprint, int(image_size))


def uncertain_policy_counts(
    folder: str | Path, target: str = "Pleural Effusion", frontal_only: bool = True
) -> tuple[Any, Any]:
    """How the uncertain-label policy changes the training labels of a CheXpert folder.

    Returns ``(raw, by_policy)``: the counts of raw labels (positive 1, negative 0, uncertain -1,
    blank) in ``train.csv``, and per policy (``ones``, ``zeros``, ``ignore``) the resulting
    positives, negatives and dropped images. Labels only; images are not opened. NIH and
    labels CSVs have no uncertain labels: every policy then gives the same labels.
    """
    import numpy as np
    import pandas as pd

    from mocoxr import data

    df = data.formats.read_target_labels(folder, target, frontal_only)
    raw = df["raw_label"]
    raw_counts = pd.DataFrame({
        "raw label": ["1 (positive)", "0 (negative)", "-1 (uncertain)", "blank"],
        "images": [int((raw == 1).sum()), int((raw == 0).sum()), int((raw == -1).sum()),
                   int(raw.isna().sum())],
    })
    rows = []
    for policy in data.UNCERTAIN_POLICIES:
        label, keep = data.apply_uncertain_policy(raw, policy)
        rows.append({"policy": policy, "positive": int(label[keep].sum()),
                     "negative": int((label[keep] == 0).sum()), "dropped": int((~keep).sum()),
                     "prevalence": float(np.mean(label[keep])) if keep.any() else float("nan")})
    return raw_counts, pd.DataFrame(rows)


# ----------------------------------------------------------------------------- pretraining


def pretrain_dir(run_dir: str | Path, cfg: Any, ds: Dataset) -> Path:
    """``<run_dir>/checkpoints/moco_<backbone>_<hash>``: one folder per pretraining recipe and
    dataset (speed-only settings excluded), so a changed profile never resumes a checkpoint it
    did not write, and going back to an earlier recipe finds its finished run."""
    from mocoxr import checkpoint

    conf = {k: v for k, v in checkpoint.config_dict(cfg).items() if k not in SPEED_FIELDS}
    key = keys.sha(json.dumps([conf, ds.fingerprint, keys.code_digest(keys.TRAINING_CODE)],
                              sort_keys=True).encode())[:10]
    return run_paths(run_dir).checkpoints / f"moco_{cfg.backbone}_{key}"


def record_pretrained(run_dir: str | Path, backbone: str, folder: Path) -> Path:
    """Point ``<run_dir>/checkpoints/moco_<backbone>.json`` at a finished pretraining folder:
    the later notebooks use that backbone (:meth:`RunPaths.moco_backbone`). Returns the
    exported backbone file."""
    exported = Path(folder) / "backbone.pt"
    if not exported.is_file():
        raise FileNotFoundError(f"{exported} does not exist: pretraining has not finished")
    pointer = run_paths(run_dir).checkpoints / f"moco_{backbone}.json"
    rel = lambda p: os.path.relpath(Path(p).resolve(), pointer.parent.resolve())  # noqa: E731
    store.atomic_write_text(pointer, json.dumps({"folder": rel(folder), "backbone": rel(exported)}))
    return exported


def knn_monitor(ds: Dataset, k: int = 20, max_train: int = 1000, max_eval: int = 500, seed: int = 0):
    """``probe.make_knn_monitor`` on a seeded sample of labelled train rows (the memory bank)
    and validation rows (scored), both capped so the monitor stays cheap."""
    import numpy as np

    from mocoxr import probe

    rng = np.random.default_rng(seed)
    pick = lambda rows, n: np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False))  # noqa: E731
    tr, ev = pick(ds.prepared.rows("train"), max_train), pick(ds.prepared.rows("val"), max_eval)
    return probe.make_knn_monitor(ds.images, tr, ds.prepared.labels(tr), ev, ds.prepared.labels(ev),
                                  ds.mean, ds.std, ds.image_size, k=k)


# ----------------------------------------------------------------------------- glue


def glue(name: str, value: Any, display: bool = False) -> None:
    """``myst_nb.glue`` with numpy scalars turned into Python numbers, so that the stored
    ``text/plain`` reads back as a number (and ``{glue:text}`key:.3f``` formats it)."""
    from myst_nb import glue as _glue

    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    _glue(name, value, display=display)


FRACTION_TAGS = {"small": min, "large": max}  # tag -> which label fraction of the deltas


def glue_effect(deltas: Any, summary: Any, baseline: str, prefixes: dict[str, str] | None = None,
                tags: Sequence[str] = ("small", "large")) -> dict[str, float]:
    """Glue the effect of MoCo over ``baseline`` at the smallest (tag ``small``) and largest
    (``large``) label fraction of ``deltas``, for the prose of a results page.

    ``deltas``: paired-difference rows (``experiments.compute_deltas``); ``summary``: the
    draw-averaged AUC rows (``tables.mean_rows``) of the same experiments; ``prefixes``: the
    prefix of each experiment's names (default: the only experiment of ``deltas``, no prefix).
    Glues ``frac_<tag>`` (as a percentage), ``baseline``, and per experiment
    ``<prefix>delta_<tag>``, ``<prefix>delta_<tag>_lo``/``_hi`` (its 95% CI) and
    ``<prefix>auc_moco_<tag>``, ``<prefix>auc_base_<tag>``. Returns ``{tag: label fraction}``.
    """
    import numpy as np

    from mocoxr import tables

    if prefixes is None:
        found = sorted(set(deltas["experiment"]))
        if len(found) != 1:
            raise ValueError(f"deltas hold experiments {found}: name a prefix for each")
        prefixes = {found[0]: ""}
    fractions = {tag: float(FRACTION_TAGS[tag](deltas["label_fraction"])) for tag in tags}
    for tag, f in fractions.items():
        glue(f"frac_{tag}", tables.pct(f))
        for experiment, prefix in prefixes.items():
            d = deltas[deltas["experiment"] == experiment]
            row = d[np.isclose(d["label_fraction"], f)].iloc[0]
            glue(f"{prefix}delta_{tag}", float(row["delta"]))
            glue(f"{prefix}delta_{tag}_lo", float(row["ci_low"]))
            glue(f"{prefix}delta_{tag}_hi", float(row["ci_high"]))
            s = summary[summary["experiment"] == experiment]
            for init, name in (("moco", "moco"), (baseline, "base")):
                r = s[(s["init"] == init) & np.isclose(s["label_fraction"], f)].iloc[0]
                glue(f"{prefix}auc_{name}_{tag}", float(r["auc"]))
    glue("baseline", baseline)
    return fractions


def glued_values(nb_path: Path) -> dict[str, Any]:
    """Values a notebook stored with ``myst_nb.glue``, parsed from their ``text/plain`` form
    (numbers and strings come back as Python values; anything else as its repr string)."""
    import nbformat

    nb = nbformat.read(str(nb_path), as_version=4)
    out: dict[str, Any] = {}
    for c in nb.cells:
        for o in c.get("outputs", []):
            meta = o.get("metadata", {}).get("scrapbook")
            if not meta:
                continue
            prefix = meta.get("mime_prefix", "")
            text = o.get("data", {}).get(prefix + "text/plain")
            try:
                out[meta["name"]] = ast.literal_eval(text) if text is not None else None
            except (ValueError, SyntaxError):
                out[meta["name"]] = text
    return out
