"""Explorers: a few controls over what a run already wrote, for a reader in a live kernel.

Each explorer is one call from a notebook (:func:`images`, :func:`augmentations`,
:func:`models`) built on a pure function that turns the controls' values into one figure
(:func:`image_card`, :func:`augment_card`, :func:`model_card`); the tests call those directly.
Nothing expensive is recomputed: images come from the decoded cache, labels from the manifest,
test scores from ``predictions/``, AUCs and their CIs from ``results.csv``. The only work done
on a change is one augmentation of one image, or the Grad-CAM of one test image from a model
the run kept (and, on phantoms, that image's true effusion region re-rendered).

Displayed, an :class:`Explorer` is a widget: its controls above an ``ipywidgets.Output`` that
the kernel refills on every change. Its display bundle also holds the current figure as a
plain ``image/png``: a page without a kernel (the built site) shows that figure of the default
selection, since the site build drops the widget view (:func:`mocoxr.book.site.stage_notebook`).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_curve

from mocoxr import augment, evaluate, plots, tables

__all__ = ["Explorer", "ModelRun", "augment_card", "augmentations", "image_card", "images",
           "manifest_row", "model_card", "models", "select_rows", "positives_first", "views"]

ANY = "any"
RAW_NAMES = {1.0: "1 (positive)", 0.0: "0 (negative)", -1.0: "-1 (uncertain)"}


# ----------------------------------------------------------------------------- the widget


def figure_png(fig: plt.Figure) -> str:
    """The figure as base64 PNG (closed afterwards, so no notebook shows it a second time)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class Explorer:
    """Controls ``{name: ipywidgets value widget}`` whose values are the keyword arguments of
    ``render`` (-> a matplotlib Figure). ``adjust(controls)`` runs first on every change (e.g.
    to bound a slider by the other controls). ``png`` holds the current figure."""

    render: Callable[..., plt.Figure]
    controls: dict[str, Any]
    adjust: Callable[[dict[str, Any]], None] | None = None
    png: str = field(default="", init=False)

    def __post_init__(self) -> None:
        import ipywidgets as widgets

        self.output = widgets.Output()
        row = widgets.HBox(list(self.controls.values()), layout=widgets.Layout(flex_flow="row wrap"))
        self.widget = widgets.VBox([row, self.output])
        self._busy = False
        self.refresh(raise_errors=True)
        for control in self.controls.values():
            control.observe(lambda change: self.refresh(), names="value")

    def values(self) -> dict[str, Any]:
        return {name: c.value for name, c in self.controls.items()}

    def refresh(self, raise_errors: bool = False) -> None:
        """Redraw from the controls' values; an error shows as a line of text in the widget."""
        if self._busy:
            return
        self._busy = True
        try:
            if self.adjust is not None:
                self.adjust(self.controls)
            self.png = figure_png(self.render(**self.values()))
            out = {"output_type": "display_data", "metadata": {},
                   "data": {"image/png": self.png, "text/plain": "<Figure>"}}
        except Exception as exc:  # noqa: BLE001 - a callback's error would be lost otherwise
            if raise_errors:
                raise
            out = {"output_type": "stream", "name": "stderr", "text": f"{type(exc).__name__}: {exc}\n"}
        finally:
            self._busy = False
        self.output.outputs = (out,)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        data = self.widget._repr_mimebundle_(**kwargs)
        data["image/png"] = self.png  # what a page without a kernel shows
        data["text/plain"] = "Explorer: the figure of the selection shown (controls need a kernel)"
        return data


def _dropdown(description: str, options: list, value: Any = None):
    """A dropdown of ``options`` (values, or (label, value) pairs), at ``value`` or the first."""
    import ipywidgets as widgets

    first = options[0][1] if isinstance(options[0], tuple) else options[0]
    return widgets.Dropdown(description=description, options=options,
                            value=first if value is None else value,
                            style={"description_width": "initial"})


def _slider(description: str, lo: float, hi: float, value: float, step: float | None = None):
    import ipywidgets as widgets

    style = {"description_width": "initial"}
    if step is None:
        return widgets.IntSlider(description=description, min=int(lo), max=int(hi), value=int(value),
                                 style=style, continuous_update=False)
    return widgets.FloatSlider(description=description, min=lo, max=hi, value=value, step=step,
                               style=style, continuous_update=False)


def _message(text: str) -> plt.Figure:
    plots.use_book_theme()
    fig, ax = plt.subplots(figsize=(4.5, 0.8))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


# ----------------------------------------------------------------------------- 01: the images


def select_rows(manifest: pd.DataFrame, split: str = ANY, label: Any = ANY,
                view: str = ANY) -> np.ndarray:
    """Positional rows of the manifest with that split, label (after the uncertain policy)
    and view; ``"any"`` matches everything (and a missing column)."""
    keep = np.ones(len(manifest), bool)
    for column, value in (("split", split), ("label", label), ("view", view)):
        if value != ANY and column in manifest:
            keep &= (manifest[column] == value).to_numpy()
    return np.flatnonzero(keep)


def manifest_row(manifest: pd.DataFrame, row: int) -> dict[str, str]:
    """What the manifest says of one image: patient, study, view, raw label, label, split."""
    r = manifest.iloc[int(row)]
    out = {"row": str(int(row)), "patient": str(r["patient"])}
    for column in ("study", "view"):
        if column in manifest:
            out[column] = str(r[column])
    if "raw_label" in manifest:
        raw = r["raw_label"]
        out["raw label"] = "blank" if pd.isna(raw) else RAW_NAMES.get(float(raw), str(raw))
    out["label"] = str(int(r["label"]))
    out["split"] = str(r["split"])
    return out


def image_card(images: np.ndarray, manifest: pd.DataFrame, split: str = ANY, label: Any = ANY,
               view: str = ANY, index: int = 0) -> plt.Figure:
    """The ``index``-th image matching the filters, beside its manifest row."""
    rows = select_rows(manifest, split, label, view)
    if len(rows) == 0:
        return _message(f"no image with split {split}, label {label}, view {view}")
    row = int(rows[min(max(int(index), 0), len(rows) - 1)])
    info = manifest_row(manifest, row)
    plots.use_book_theme()
    fig, (ax_img, ax_tab) = plt.subplots(1, 2, figsize=(6.0, 3.0), width_ratios=[1, 1.1],
                                         layout="constrained")
    ax_img.imshow(images[row], cmap="gray", vmin=0, vmax=255)
    ax_img.set_axis_off()
    ax_img.set_title(f"image {min(max(int(index), 0), len(rows) - 1) + 1} of {len(rows)}")
    ax_tab.axis("off")
    table = ax_tab.table(cellText=[[v] for v in info.values()], rowLabels=list(info),
                         colLabels=["manifest row"], loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.4)
    return fig


def images(ds: Any) -> Explorer:
    """Browse a dataset (a ``notebook.Dataset``) by split, label and view."""
    m = ds.manifest
    options = lambda col: [ANY] + sorted(m[col].unique().tolist()) if col in m else [ANY]  # noqa: E731
    labels = [(ANY, ANY)] + [(f"{v}", int(v)) for v in sorted(m["label"].unique())]
    controls = {"split": _dropdown("split", options("split"), "train" if "train" in set(m["split"]) else ANY),
                "label": _dropdown("label", labels), "view": _dropdown("view", options("view")),
                "index": _slider("image", 0, max(len(m) - 1, 0), 0)}

    def adjust(c: dict[str, Any]) -> None:
        n = len(select_rows(m, c["split"].value, c["label"].value, c["view"].value))
        c["index"].max = max(n - 1, 0)

    return Explorer(lambda **v: image_card(ds.images, m, **v), controls, adjust)


# ----------------------------------------------------------------------------- 02: the views


def views(image: np.ndarray, cfg: augment.AugmentConfig, seed: int, step: int
          ) -> tuple[list[np.ndarray], list[dict[str, float]]]:
    """The query and key views of one uint8 image (H, W) at a pretraining ``step``, drawn as
    ``pretrain.pretrain_step`` draws them (its generator seeded by ``(seed, step, 2)``, the
    query's warp first) for a batch of this image alone; and each view's drawn flip, angle and
    crop. Returns ``([original, query, key], [query params, key params])``, floats in [0, 1]."""
    from mocoxr.pretrain import derive_seed

    x = torch.from_numpy(np.array(image, dtype=np.uint8))[None]  # a copy: the cache is read-only
    gen = torch.Generator().manual_seed(derive_seed(int(seed), int(step), 2))
    out, params = [augment.resize_batch(x, cfg.out_size)[0, 0].numpy()], []
    for _ in range(2):
        state = gen.get_state()
        out.append(augment.augment_batch(x, cfg, gen)[0, 0].numpy())
        p = augment.sample_params(1, cfg, torch.Generator().set_state(state))
        params.append({k: float(v[0]) for k, v in p.items()})
    return out, params


def augment_card(images: np.ndarray, rows: np.ndarray, image_size: int, seed: int,
                 overrides: dict[str, Any], index: int = 0, smallest_crop: float = 0.85,
                 rotation: float = 10.0, flip_p: float = 0.5, step: int = 0) -> plt.Figure:
    """The image ``rows[index]`` and the two views MoCo compares at ``step``, with the crop's
    smallest side ``smallest_crop``, rotations up to ``rotation`` degrees and flip probability
    ``flip_p`` (other settings: the pretraining's ``overrides`` of ``AugmentConfig``)."""
    cfg = augment.AugmentConfig(**{**overrides, "out_size": image_size, "max_rotation": rotation,
                                   "flip_p": flip_p, "scale": (smallest_crop, 1.0)})
    row = int(rows[min(max(int(index), 0), len(rows) - 1)])
    shown, params = views(images[row], cfg, seed, step)
    titles = [f"image (row {row})"] + [
        f"{name}: {'flipped, ' if p['flip'] else ''}{round(p['angle'], 1) + 0.0:+.1f}°, crop {p['scale']:.2f}"
        for name, p in zip(("query", "key"), params)]
    fig = plots.image_grid(shown, titles, ncols=3, size=2.4)
    fig.suptitle(f"pretraining step {int(step)}, seed {int(seed)}", fontsize=9)
    return fig


def augmentations(ds: Any, cfg: Any) -> Explorer:
    """The augmentation explorer for a pretraining config (``pretrain.PretrainConfig``) on
    the training images of a ``notebook.Dataset``."""
    base = augment.AugmentConfig(out_size=cfg.image_size, **cfg.augment)
    rows = ds.prepared.rows("train")
    controls = {"index": _slider("training image", 0, len(rows) - 1, 0),
                "smallest_crop": _slider("smallest crop", 0.5, 1.0, base.scale[0], 0.01),
                "rotation": _slider("max rotation (°)", 0.0, 45.0, base.max_rotation, 0.5),
                "flip_p": _slider("flip probability", 0.0, 1.0, base.flip_p, 0.05),
                "step": _slider("step", 0, 999, 0)}
    return Explorer(lambda **v: augment_card(ds.images, rows, cfg.image_size, cfg.seed,
                                             dict(cfg.augment), **v), controls)


# ----------------------------------------------------------------------------- 03 / 04: models


@dataclass
class ModelRun:
    """What the model explorer reads from a run folder: ``results.csv`` and ``predictions/``
    of one experiment and backbone, and (Grad-CAM) the models the run kept, the decoded images
    and, on phantoms, the CheXpert-format folder whose effusion regions are known."""

    root: Path
    experiment: str
    backbone: str
    ds: Any = None  # notebook.Dataset: images, manifest, mean, std, image_size (for Grad-CAM)
    phantom_folder: Path | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def results(self) -> pd.DataFrame:
        if "results" not in self._cache:
            path = Path(self.root) / "results.csv"
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: run the {self.experiment} experiment first")
            r = pd.read_csv(path)
            r = r[(r["experiment"] == self.experiment) & (r["backbone"] == self.backbone)]
            if r.empty:
                raise ValueError(f"{path} has no {self.experiment} rows for {self.backbone}")
            self._cache["results"] = r
        return self._cache["results"]

    def predictions(self, init: str, fraction: float, draw: int):
        return evaluate.load_predictions(Path(self.root) / "predictions", self.experiment,
                                         self.backbone, init, fraction, draw)

    def model(self, init: str, fraction: float, draw: int):
        """The kept fine-tuned model, or None when the run did not keep it."""
        from mocoxr import experiments

        key = ("model", init, float(fraction), int(draw))
        if key not in self._cache:
            try:
                self._cache[key] = experiments.load_finetuned(self.root, self.experiment, self.backbone,
                                                              init, fraction, draw)
            except FileNotFoundError:
                self._cache[key] = None
        return self._cache[key]

    def mask(self, row: int) -> np.ndarray | None:
        """The true effusion region of a manifest row (phantoms only; None elsewhere)."""
        if self.phantom_folder is None:
            return None
        from mocoxr import saliency

        key = ("mask", int(row))
        if key not in self._cache:
            path = self.ds.manifest["path"].iloc[int(row)]
            self._cache[key] = saliency.phantom_masks(self.phantom_folder, [path], self.ds.image_size)[0]
        return self._cache[key]


def positives_first(y: np.ndarray) -> np.ndarray:
    """Positions of the test images, positives first (each group in manifest order)."""
    y = np.asarray(y)
    return np.concatenate([np.flatnonzero(y == 1), np.flatnonzero(y != 1)])


def _result_line(run: ModelRun, init: str, fraction: float, draw: int) -> str:
    r = run.results()
    hit = r[(r["init"] == init) & np.isclose(r["label_fraction"], fraction) & (r["draw"] == draw)]
    if hit.empty:
        return "no row in results.csv"
    row = hit.iloc[0]
    return (f"AUC {row['auc']:.3f}, 95% CI {row['ci_low']:.3f} to {row['ci_high']:.3f}\n"
            f"{int(row['n_train'])} training, {int(row['n_test'])} test images")


def _cam_panels(axes, run: ModelRun, init: str, fraction: float, draw: int, row: int,
                label: int, score: float) -> None:
    from mocoxr import saliency

    img = run.ds.images[row]
    axes[0].imshow(img, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title(f"row {row}: label {label}, score {score:.2f}", fontsize=8,
                      fontweight="normal")
    model = run.model(init, fraction, draw)
    mask = run.mask(row)
    if model is None:
        axes[1].text(0.5, 0.5, "no kept model\nfor this selection", ha="center", va="center",
                     fontsize=8)
    else:
        cam = saliency.grad_cam_rows(model, run.ds.images, np.array([row]), run.ds.mean,
                                     run.ds.std, run.ds.image_size)[0]
        axes[1].imshow(img, cmap="gray", vmin=0, vmax=255)
        axes[1].imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes[1].set_title("Grad-CAM", fontsize=8, fontweight="normal")
    if mask is not None and mask.any():
        axes[2].imshow(img, cmap="gray", vmin=0, vmax=255)
        axes[2].contour(mask, levels=[0.5], colors="C3", linewidths=1.0)
        axes[2].set_title("true effusion region", fontsize=8, fontweight="normal")
    else:
        why = "no effusion\nin this image" if mask is not None else "no true region\n(not a phantom)"
        axes[2].text(0.5, 0.5, why, ha="center", va="center", fontsize=8)
    for ax in axes:
        ax.set_axis_off()


def model_card(run: ModelRun, init: str, fraction: float, draw: int = 0, image: int | None = None
               ) -> plt.Figure:
    """The ROC curve of one (init, label fraction, draw) on the test set with its AUC and 95%
    CI from ``results.csv``; with ``image`` (a position in :func:`positives_first`), that test
    image, its Grad-CAM from the kept model and its true effusion region beside."""
    rows, y, scores = run.predictions(init, fraction, draw)
    plots.use_book_theme()
    ncols = 1 if image is None else 4
    fig, axes = plt.subplots(1, ncols, figsize=(3.4 if image is None else plots.PAGE_WIDTH, 2.9),
                             width_ratios=[1.3] + [1] * (ncols - 1), squeeze=False,
                             layout="constrained")
    axes = axes[0]
    fpr, tpr, _ = roc_curve(y, scores)
    axes[0].plot(fpr, tpr, color=plots.colour(init))
    axes[0].plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":")
    axes[0].set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1),
                ylim=(0, 1.01), aspect="equal")
    axes[0].set_title(_result_line(run, init, fraction, draw), fontsize=8, fontweight="normal")
    if image is not None:
        pos = int(positives_first(y)[min(max(int(image), 0), len(y) - 1)])
        _cam_panels(axes[1:], run, init, fraction, draw, int(rows[pos]), int(y[pos]),
                    float(scores[pos]))
    fig.suptitle(f"{run.experiment}: {init}, {tables.pct(fraction)} of labels, draw {int(draw)}",
                 fontsize=9)
    return fig


def models(ds: Any, run_dir: str | Path, experiment: str, backbone: str,
           phantom_folder: str | Path | None = None, cam: bool | None = None) -> Explorer:
    """Pick an init, label fraction and draw of ``experiment``; Grad-CAM (``cam``, default:
    fine-tuning experiments) of a chosen test image beside its true effusion region when
    ``phantom_folder`` (the embedded data's CheXpert-format folder) is given."""
    from mocoxr.book.paths import run_paths

    run = ModelRun(run_paths(run_dir).root, experiment, backbone, ds,
                   Path(phantom_folder) if phantom_folder is not None else None)
    r = run.results()
    cells = r[r["draw"] >= 0]
    inits = sorted(cells["init"].unique(), key=lambda i: (i != "moco", i))
    fractions = sorted(cells["label_fraction"].unique())
    controls = {"init": _dropdown("init", inits),
                "fraction": _dropdown("label fraction", [(tables.pct(f), float(f)) for f in fractions]),
                "draw": _dropdown("draw", [0])}
    if cam if cam is not None else "finetune" in experiment:
        n_test = len(run.predictions(inits[0], fractions[0], int(cells["draw"].min()))[0])
        controls["image"] = _slider("test image (positives first)", 0, n_test - 1, 0)

    def adjust(c: dict[str, Any]) -> None:
        here = cells[(cells["init"] == c["init"].value)
                     & np.isclose(cells["label_fraction"], c["fraction"].value)]
        draws = sorted(int(d) for d in here["draw"]) or [0]
        if list(c["draw"].options) != draws:
            c["draw"].options = draws
            c["draw"].value = draws[0]

    return Explorer(lambda **v: model_card(run, **v), controls, adjust)
