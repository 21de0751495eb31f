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
           "run_paths", "saliency_section", "SaliencySection", "shenzhen_folder",
           "uncertain_policy_counts"]

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
    dataset (speed-only settings excluded, the arithmetic precision included), so a changed profile never resumes a checkpoint it
    did not write, and going back to an earlier recipe finds its finished run."""
    from mocoxr import checkpoint, runtime

    conf = {k: v for k, v in checkpoint.config_dict(cfg).items() if k not in SPEED_FIELDS}
    if runtime.precision(cfg.amp, cfg.device) != "fp32":  # fp32 runs keep their folder names
        conf["precision"] = runtime.precision(cfg.amp, cfg.device)
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


# ----------------------------------------------------------------------------- saliency


@dataclass
class SaliencySection:
    """What chapter 04's saliency section shows: the Grad-CAM block and its grid, the images
    mapped, the maps' scores against the phantom region (``localisation``), the counterfactual
    drops (``drops``; both None on real data), the cascading-randomisation table (``sanity``)
    and the figures (``maps``, ``sanity_plot``)."""

    layer: str
    grid: tuple[int, int]
    occlusion_patch: int
    occlusion_images: int
    rows: Any  # manifest rows of the mapped (effusion-positive test) images
    localisation: Any
    drops: Any
    sanity: Any
    maps: Any
    sanity_plot: Any


def _section_images(ds: Dataset, chexpert_folder: str | Path | None, max_images: int, seed: int):
    """Effusion-positive test rows (those whose effusion shows at this size, on phantoms),
    a seeded sample of at most ``max_images``, with their counterfactuals (None on real data)."""
    import numpy as np

    from mocoxr import counterfactual

    test = ds.prepared.rows("test")
    pos = test[ds.prepared.labels(test) == 1]
    cf = None
    if chexpert_folder is not None:
        cf = counterfactual.counterfactual_images(chexpert_folder, ds.manifest["path"].iloc[pos],
                                                  ds.images.shape[-1])
        shown = cf.mask.any(axis=(1, 2))
        pos, cf = pos[shown], cf.take(shown)
    if not len(pos):
        raise ValueError("saliency_section: no effusion-positive test image to map")
    pick = np.sort(np.random.default_rng(seed).choice(len(pos), min(max_images, len(pos)),
                                                      replace=False))
    return pos[pick], None if cf is None else cf.take(pick)


def saliency_section(ds: Dataset, run_dir: str | Path, backbone: str, inits: Sequence[str],
                     fractions: Sequence[float], chexpert_folder: str | Path | None = None,
                     seed: int = 0, n_boot: int = 1000, max_images: int = 64,
                     occlusion_images: int = 32, sanity_images: int = 6,
                     occlusion_grid: int = 8) -> SaliencySection:
    """Chapter 04's saliency section in one call, gluing its numbers (``cam_*``, ``occ_*``,
    ``cf_*``, ``san_*``; NaN where real data has no region).

    Maps (Grad-CAM at ``saliency.cam_layer``, occlusion with ``occlusion_grid`` patches per
    side) of the models fine-tuned on the largest of ``fractions`` (first draw, kept by
    ``experiments.run_finetune_experiment``), for at most ``max_images`` effusion-positive test
    images (occlusion, a forward pass per patch, for the first ``occlusion_images``); on
    phantoms (``chexpert_folder`` given) their pointing game and share inside, and the
    counterfactual drops of every kept model (``counterfactual.drop_table``); the cascading
    randomisation of the first init's model on the first ``sanity_images`` images.
    """
    import matplotlib.pyplot as plt

    from mocoxr import counterfactual, experiments, saliency, tables

    fractions = sorted(float(f) for f in fractions)
    tuned = {(i, f): experiments.load_finetuned(run_dir, "finetune", backbone, i, f)
             for i in inits for f in fractions}
    rows, cf = _section_images(ds, chexpert_folder, max_images, seed)
    size = ds.image_size
    layer, grid = saliency.cam_layer(tuned[inits[0], fractions[-1]], size)
    patch = max(1, size // occlusion_grid)
    methods = {"Grad-CAM": lambda m, x: saliency.grad_cam(m, x, layer=layer),
               "occlusion": lambda m, x: saliency.occlusion(m, x, patch)}
    x = saliency.model_inputs(ds.images[rows], ds.mean, ds.std, size)
    n_maps = {"Grad-CAM": len(x), "occlusion": min(occlusion_images, len(x))}
    maps = {(name, i): f(tuned[i, fractions[-1]], x[:n_maps[name]])
            for name, f in methods.items() for i in inits}
    loc = drops = None
    if cf is not None:
        loc = _localisation(maps, cf.mask)
        drops = counterfactual.drop_table(
            {key: {v: counterfactual.logits(m, getattr(cf, v), ds.mean, ds.std, size)
                   for v in counterfactual.VERSIONS} for key, m in tuned.items()}, n_boot, seed)
    sanity = saliency.cascading_randomisation(tuned[inits[0], fractions[-1]],
                                              x[:sanity_images], methods, seed=seed)
    show = list(range(min(4, len(rows), occlusion_images)))
    fig = saliency.plot_cams(ds.images[rows[show]],
                             {f"{n}, {i}": m[show] for (n, i), m in maps.items()},
                             None if cf is None else cf.mask[show])
    sanity_plot = saliency.plot_randomisation(
        sanity, f"Cascading randomisation, {inits[0]}, {tables.pct(fractions[-1])} of labels")
    plt.close(fig)  # shown where the page places them, with display(...)
    plt.close(sanity_plot)
    sec = SaliencySection(layer, grid, patch, n_maps["occlusion"], rows, loc, drops, sanity, fig,
                          sanity_plot)
    _glue_section(sec, inits, fractions)
    return sec


def _localisation(maps: dict, masks: Any) -> Any:
    """Pointing game and share inside per (map, init), the uniform map's share beside them."""
    import pandas as pd

    from mocoxr import saliency

    parts = [saliency.localisation_table({init: m}, masks[:len(m)]).assign(map=name)
             for (name, init), m in maps.items()]
    t = pd.concat(parts, ignore_index=True).rename(columns={"region_area": "uniform_share"})
    return t[["map", "init", "images", "pointing_hit_rate", "share_inside", "uniform_share"]]


def _glue_section(sec: SaliencySection, inits: Sequence[str], fractions: Sequence[float]) -> None:
    import numpy as np

    from mocoxr import tables

    nan = float("nan")
    glue("cam_layer", sec.layer)
    glue("cam_grid", f"{sec.grid[0]} × {sec.grid[1]}")
    glue("cam_n", int(len(sec.rows)))
    glue("cam_frac", tables.pct(fractions[-1]))
    glue("occ_patch", int(sec.occlusion_patch))
    glue("occ_n", int(sec.occlusion_images))
    glue("san_images", int(sec.sanity["image"].nunique()))
    last = sec.sanity[sec.sanity["step"] == sec.sanity["step"].max()]
    top = sec.sanity[sec.sanity["step"] == 1]
    for method, tag in (("Grad-CAM", "cam"), ("occlusion", "occ")):
        glue(f"san_{tag}_top", float(top.loc[top["method"] == method, "spearman"].mean()))
        glue(f"san_{tag}_all", float(last.loc[last["method"] == method, "spearman"].mean()))
    loc, drops = sec.localisation, sec.drops
    for method, m in (("Grad-CAM", "cam"), ("occlusion", "occ")):
        glue(f"{m}_area", nan if loc is None else
             float(loc.loc[loc["map"] == method, "uniform_share"].iloc[0]))
    for init in inits:
        tag = "moco" if init == "moco" else "base"
        for method, m in (("Grad-CAM", "cam"), ("occlusion", "occ")):
            r = None if loc is None else loc[(loc["map"] == method) & (loc["init"] == init)].iloc[0]
            glue(f"{m}_hit_{tag}", nan if r is None else float(r["pointing_hit_rate"]))
            glue(f"{m}_share_{tag}", nan if r is None else float(r["share_inside"]))
        for which, f in (("small", fractions[0]), ("large", fractions[-1])):
            r = None if drops is None else drops[(drops["init"] == init)
                                                 & np.isclose(drops["label_fraction"], f)].iloc[0]
            for col, name in (("drop_prob", "drop"), ("drop_logit", "logit"),
                              ("restored_drop_prob", "restored")):
                for suffix in ("", "_lo", "_hi"):
                    glue(f"cf_{name}_{tag}_{which}{suffix}",
                         nan if r is None else float(r[col + suffix]))
    glue("cf_frac_small", tables.pct(fractions[0]))


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
