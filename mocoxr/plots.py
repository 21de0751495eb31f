"""Figures the book's notebooks show; each function returns a matplotlib Figure and computes
nothing the pipeline does not already store (the tables and verdicts: :mod:`mocoxr.tables`).

**One look for the book.** Every figure function first calls :func:`use_book_theme` (seaborn's
``whitegrid`` style, ``notebook`` context, colour-blind palette), so figures look the same
whichever notebook draws first, and axes a notebook makes with :func:`panels` share it.
Figures are at most ``PAGE_WIDTH`` inches wide (the body of a Jupyter Book page at 100 dpi);
legends sit outside the data and carry a title.

**Colours** are fixed per init across the book: MoCo ``C0`` (blue), the baseline (random or
ImageNet) ``C1`` (orange), other inits the next colours in turn; the paper's values are drawn
dashed with open markers in the same colours.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.transforms import offset_copy

from mocoxr.tables import EXPERIMENT_TITLES, mean_rows, paper_deltas, pct

PAGE_WIDTH = 7.5  # inches: ~750 px at 100 dpi, the body of a Jupyter Book page
INIT_COLOURS = {"moco": "C0", "random": "C1", "imagenet": "C1"}


def use_book_theme() -> None:
    """Set the book's seaborn theme (matplotlib's global rcParams; idempotent)."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", font_scale=0.85,
                  rc={"figure.dpi": 100, "legend.frameon": False, "axes.titleweight": "bold"})


def colour(init: str, i: int = 0) -> str:
    """The book-wide colour of an init (MoCo C0, random/imagenet C1, others in turn)."""
    return INIT_COLOURS.get(str(init), f"C{(i + 2) % 10}")


def panels(n: int, ncols: int = 2, height: float = 3.6) -> tuple[plt.Figure, np.ndarray]:
    """A page-wide figure with ``n`` axes, ``ncols`` to a row (``height`` inches per row), in
    the book's theme and constrained layout; returns ``(fig, axes)`` with ``axes`` flat."""
    use_book_theme()
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(PAGE_WIDTH, height * nrows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.remove()
    return fig, axes.flat[:n]


def _legend_below(ax, title: str, ncol: int = 2) -> None:
    """Move the axes' legend (seaborn's or matplotlib's) under its x label, titled."""
    old = ax.get_legend()
    handles, labels = ((old.legend_handles, [t.get_text() for t in old.get_texts()]) if old
                       else ax.get_legend_handles_labels())
    order = sorted(range(len(labels)), key=lambda k: labels[k].endswith("(paper)"))  # ours first
    handles, labels = [handles[k] for k in order], [labels[k] for k in order]
    below = offset_copy(ax.transAxes, fig=ax.figure, y=-34, units="points")
    if max(map(len, labels), default=0) > 24:  # long labels: one column, not wider than the axes
        ncol = 1
    ax.legend(handles, labels, title=title, loc="upper center", bbox_to_anchor=(0.5, 0),
              bbox_transform=below, ncol=min(ncol, max(len(labels), 1)), fontsize="small",
              title_fontsize="small")


def _figure_legend(fig: plt.Figure, ax, title: str, ncol: int = 2) -> None:
    """One legend for the whole figure, below its panels, from ``ax``'s entries."""
    old = ax.get_legend()
    handles, labels = ((old.legend_handles, [t.get_text() for t in old.get_texts()]) if old
                       else ax.get_legend_handles_labels())
    if old:
        old.remove()
    fig.legend(handles, labels, title=title, loc="outside lower center", ncol=ncol,
               fontsize="small", title_fontsize="small")


def _hue_lines(ax, data: pd.DataFrame, x: str, y: str, hue: str, palette: Mapping[str, str],
               label: str = "{}", **kw) -> None:
    """``sns.lineplot`` one line per ``hue`` level (in ``palette`` order), each labelled
    ``label.format(level)`` for the legend."""
    levels = [h for h in palette if (data[hue] == h).any()]
    before = len(ax.lines)
    sns.lineplot(data=data, x=x, y=y, hue=hue, hue_order=levels, palette=palette, ax=ax,
                 errorbar=None, legend=False, **kw)
    for line, level in zip(ax.lines[before:], levels):
        line.set_label(label.format(level))
        if kw.get("mfc") == "white":  # open markers: seaborn's white edge would hide them
            line.set_markeredgecolor(line.get_color())


def _fraction_axis(ax, fractions: Sequence[float]) -> None:
    ax.set_xscale("log")
    fr = sorted(set(float(f) for f in fractions))
    ax.set_xticks(fr)
    ax.set_xticklabels([pct(f) for f in fr])
    ax.minorticks_off()
    ax.set_xlabel("label fraction (log scale)")


def _own_figure(ax, figsize: tuple[float, float]):
    """``(fig, ax)``: a new themed figure when ``ax`` is None, else ``(None, ax)``."""
    use_book_theme()
    if ax is not None:
        return None, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


# ----------------------------------------------------------------------------- images


def _gray(ax, img: np.ndarray) -> None:
    img = np.asarray(img).squeeze()
    ax.imshow(img, cmap="gray", vmin=0, vmax=1 if img.dtype.kind == "f" else 255)
    ax.grid(False)
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, ncols: int = 6,
               size: float = 1.7, title_colours: Sequence[str] | None = None) -> plt.Figure:
    """Gray images in a grid, one title per image (optionally coloured); ``size`` inches per
    image, less when ``ncols`` of them would be wider than the page."""
    n = len(images)
    if n == 0:
        raise ValueError("image_grid: no images")
    use_book_theme()
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    size = min(size, PAGE_WIDTH / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * 1.15),
                             squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            _gray(ax, images[i])
            if titles is not None:
                ax.set_title(titles[i], fontsize=8, fontweight="normal",
                             color=title_colours[i] if title_colours is not None else "black")
    return fig


def augmented_views(originals: np.ndarray, view_q: np.ndarray, view_k: np.ndarray,
                    size: float = 1.7) -> plt.Figure:
    """Three rows: the images, the query view and the key view MoCo compares."""
    n = len(originals)
    if not (len(view_q) == len(view_k) == n) or n == 0:
        raise ValueError(f"need the same positive number of originals and views, got "
                         f"{n}, {len(view_q)}, {len(view_k)}")
    use_book_theme()
    size = min(size, (PAGE_WIDTH - 0.4) / n)
    fig, axes = plt.subplots(3, n, figsize=(size * n + 0.4, size * 3.1), squeeze=False,
                             layout="constrained")
    for row, (name, imgs) in enumerate([("image", originals), ("view 1\n(query)", view_q),
                                        ("view 2\n(key)", view_k)]):
        for j in range(n):
            _gray(axes[row, j], imgs[j])
        axes[row, 0].set_ylabel(name, fontsize=9)
    return fig


def count_bars(counts: pd.DataFrame, index: str, columns: Sequence[str], title: str = "",
               ylabel: str = "images", legend_title: str = "") -> plt.Figure:
    """Stacked bars of ``columns`` for each value of ``index`` (e.g. label counts per policy),
    ``columns[0]`` at the bottom, each segment's count written on it."""
    use_book_theme()
    long = counts.melt(id_vars=[index], value_vars=list(columns), var_name="part",
                       value_name="count")
    long[index] = long[index].astype(str)
    fig, ax = plt.subplots(figsize=(min(PAGE_WIDTH, 2.8 + 1.1 * len(counts)), 3.4),
                           layout="constrained")
    palette = {c: f"C{i}" for i, c in enumerate(columns)}
    # histplot stacks the last hue level lowest: reversed, columns[0] is at the bottom
    sns.histplot(long, x=index, hue="part", weights="count", multiple="stack", discrete=True,
                 shrink=0.75, hue_order=list(reversed(columns)), palette=palette, alpha=1,
                 linewidth=0, ax=ax)
    for bars in ax.containers:
        ax.bar_label(bars, labels=[f"{int(b.get_height())}" if b.get_height() > 0 else ""
                                   for b in bars], label_type="center", fontsize=8, color="white",
                     fontweight="bold")
    ax.set(ylabel=ylabel, xlabel=index, title=title)
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), title=legend_title or None,
                    fontsize="small", title_fontsize="small")
    return fig


# ----------------------------------------------------------------------------- pretraining


def pretraining_curves(log: pd.DataFrame, monitor: str | Sequence[str] = ("knn_auc", "linear_auc"),
                       smooth: int = 20) -> plt.Figure:
    """InfoNCE loss per step (raw and a running mean) and, when logged, the monitor metrics."""
    if "loss" not in log or "step" not in log:
        raise ValueError(f"loss log needs columns step and loss, has {list(log.columns)}")
    names = [monitor] if isinstance(monitor, str) else list(monitor)
    names = [m for m in names if m in log and log[m].notna().any()]
    fig, axes = panels(2 if names else 1, height=3.4)
    if not names:
        fig.set_size_inches(PAGE_WIDTH * 0.65, 3.4)
    ax = axes[0]
    loss = log.dropna(subset=["loss"])
    w = max(1, min(smooth, len(loss) // 5 or 1))
    sns.lineplot(x=loss["step"], y=loss["loss"], color="C0", alpha=0.3, lw=0.8, ax=ax,
                 label="per step")
    sns.lineplot(x=loss["step"], y=loss["loss"].rolling(w, min_periods=1).mean(), color="C0",
                 ax=ax, label=f"running mean ({w} steps)")
    ax.set(xlabel="step", ylabel="InfoNCE loss", title="MoCo pretraining loss")
    _legend_below(ax, "loss", ncol=1)
    if names:
        ax2 = axes[1]
        long = log.melt(id_vars=["step"], value_vars=names, var_name="monitor").dropna()
        _hue_lines(ax2, long, "step", "value", "monitor",
                   {m: f"C{i + 2}" for i, m in enumerate(names)}, marker="o")
        for line in ax2.lines:
            line.set_label(line.get_label().replace("knn_", "k-NN_").replace("_auc", " AUC")
                           .replace("_", " "))
        ax2.axhline(0.5, color="0.6", lw=0.8, ls=":")
        ax2.set(xlabel="step", ylabel="validation AUC",
                title="Representation quality")
        _legend_below(ax2, "monitor", ncol=1)
    return fig


def finetune_curves(histories: Mapping[str, pd.DataFrame], title: str = "") -> plt.Figure:
    """Fine-tuning histories (``finetune.finetune``'s: step, train_loss, val_auc, best) by
    init: training loss and validation AUC against the optimizer step, the kept point ringed."""
    fig, (ax, ax2) = panels(2, height=3.2)
    for i, (init, h) in enumerate(histories.items()):
        c = colour(init, i)
        ax.plot(h["step"], h["train_loss"], marker="o", color=c, label=init)
        ax2.plot(h["step"], h["val_auc"], marker="o", color=c, label=init)
        kept = h[h["best"].astype(bool)]
        ax2.scatter(kept["step"], kept["val_auc"], s=160, facecolors="none", edgecolors=c)
    ax.set(xlabel="optimizer step", ylabel="training loss (BCE)", title="Training loss")
    ax2.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax2.set(xlabel="optimizer step", ylabel="validation AUC", title="Validation AUC (ringed: kept)")
    _legend_below(ax, "init", ncol=2)
    _legend_below(ax2, "init", ncol=2)
    if title:
        fig.suptitle(title, fontweight="bold")
    return fig


# ----------------------------------------------------------------------------- results


def auc_vs_fraction(results: pd.DataFrame, experiment: str, backbone: str | None = None,
                    paper: pd.DataFrame | None = None, ax=None, title: str | None = None):
    """Mean AUC over draws against label fraction (log x) with its 95% CI band, one line per
    init; optionally the paper's values (dashed, open markers). Returns the Figure."""
    rows = mean_rows(results, experiment, backbone)
    if rows.empty:
        raise ValueError(f"no draw-averaged rows for experiment {experiment!r}, backbone {backbone!r}")
    fig, ax = _own_figure(ax, (0.8 * PAGE_WIDTH, 4.4))
    inits = list(dict.fromkeys(rows["init"]))
    palette = {init: colour(init, i) for i, init in enumerate(inits)}
    _hue_lines(ax, rows, "label_fraction", "auc", "init", palette, "{} (ours)", marker="o")
    for init, g in rows.groupby("init", sort=False):
        ax.fill_between(g["label_fraction"], g["ci_low"], g["ci_high"], color=palette[init],
                        alpha=0.18, lw=0)
    fractions = list(rows["label_fraction"])
    if paper is not None:
        p = paper[paper["experiment"] == experiment]
        if backbone is not None:
            p = p[p["backbone"] == backbone]
        pal = {init: colour(init, i) for i, init in enumerate(sorted(set(p["init"])))}
        _hue_lines(ax, p, "label_fraction", "auc", "init", pal, "{} (paper)", ls="--",
                   marker="s", mfc="white", ms=5, lw=1.2, alpha=0.85)
        fractions += list(p["label_fraction"])
    _fraction_axis(ax, fractions)
    ax.set_ylabel("test AUC (mean over draws, 95% CI)")
    ax.set_title(title or EXPERIMENT_TITLES.get(experiment, experiment))
    _legend_below(ax, "init")
    return fig or ax.figure


def delta_plot(deltas: pd.DataFrame, experiments: Sequence[str], backbone: str | None = None,
               paper: pd.DataFrame | None = None, ax=None, title: str = "MoCo minus baseline"):
    """Paired-bootstrap AUC differences with 95% CIs against label fraction (log x), one series
    per experiment (offset sideways so the bars do not overlap); zero marked. Optionally the
    paper's differences (dashed, open markers)."""
    fig, ax = _own_figure(ax, (0.8 * PAGE_WIDTH, 4.4))
    fractions: list[float] = []
    n = len(experiments)
    for i, exp in enumerate(experiments):
        d = deltas[deltas["experiment"] == exp]
        if backbone is not None:
            d = d[d["backbone"] == backbone]
        if d.empty:
            continue
        d = d.sort_values("label_fraction")
        x = d["label_fraction"].to_numpy() * 10 ** (0.04 * (i - (n - 1) / 2))
        err = np.vstack([d["delta"] - d["ci_low"], d["ci_high"] - d["delta"]])
        label = EXPERIMENT_TITLES.get(exp, exp) + f" ({d['comparison'].iloc[0]})"
        ax.errorbar(x, d["delta"], yerr=err, fmt="o-", capsize=3, color=f"C{i + 2}", label=label)
        fractions += list(d["label_fraction"])
    for i, exp in enumerate(experiments if paper is not None else ()):
        p = paper_deltas(paper, exp, backbone)
        if len(p):
            ax.plot(p["label_fraction"], p["delta"], ls="--", marker="o", mfc="white",
                    color=f"C{i + 2}", alpha=0.8, label=f"{EXPERIMENT_TITLES.get(exp, exp)} (paper)")
            fractions += list(p["label_fraction"])
    if not fractions:
        raise ValueError(f"no deltas for experiments {list(experiments)}, backbone {backbone!r}")
    ax.axhline(0, color="black", lw=0.8)
    _fraction_axis(ax, fractions)
    ax.set_ylabel("AUC difference (95% CI)")
    ax.set_title(title)
    _legend_below(ax, "experiment (comparison)", ncol=1 if paper is None else 2)
    return fig or ax.figure


def seed_effects(per_seed: pd.DataFrame, pooled: pd.DataFrame, experiments: Sequence[str],
                 backbone: str | None = None, height: float = 3.4) -> plt.Figure:
    """One panel per experiment: each seed's paired delta as a grey point (its own test-set
    CI as a thin bar), the pooled mean over seeds with its CI (seed spread and test sampling)
    in colour, against label fraction (log x); zero marked."""
    exps = [e for e in experiments if (pooled["experiment"] == e).any()]
    if not exps:
        raise ValueError(f"no pooled deltas for experiments {list(experiments)}")
    fig, axes = panels(len(exps), ncols=len(exps), height=height)
    for i, (ax, exp) in enumerate(zip(axes, exps)):
        pool, seeds_ = (t[t["experiment"] == exp] for t in (pooled, per_seed))
        if backbone is not None:
            pool, seeds_ = pool[pool["backbone"] == backbone], seeds_[seeds_["backbone"] == backbone]
        pool = pool.sort_values("label_fraction")
        n = max(int(seeds_["seed"].nunique()), 1)
        for j, (seed, g) in enumerate(seeds_.sort_values("label_fraction").groupby("seed")):
            x = g["label_fraction"].to_numpy() * 10 ** (0.05 * (j - (n - 1) / 2) - 0.12)
            ax.errorbar(x, g["delta"], yerr=np.vstack([g["delta"] - g["ci_low"],
                                                       g["ci_high"] - g["delta"]]),
                        fmt="o", ms=4, lw=0.8, capsize=0, color="0.55",
                        label="single seeds (test-set CI)" if j == 0 else None)
        ax.errorbar(pool["label_fraction"], pool["delta"],
                    yerr=np.vstack([pool["delta"] - pool["ci_low"], pool["ci_high"] - pool["delta"]]),
                    fmt="D-", ms=6, capsize=4, color=f"C{i + 2}", label=f"mean of {n} seeds (95% CI)")
        ax.axhline(0, color="black", lw=0.8)
        _fraction_axis(ax, list(pool["label_fraction"]))
        ax.set_title(EXPERIMENT_TITLES.get(exp, exp))
        _legend_below(ax, "MoCo minus baseline", ncol=1)  # per panel: its own colour
    axes[0].set_ylabel("MoCo minus baseline (AUC)")
    return fig


def roc_panels(curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
               size: float = 3.6) -> plt.Figure:
    """ROC curves: one panel per key of ``curves`` (e.g. '1% labels'), one line per init
    (``{panel: {init: (y, scores)}}``), AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    use_book_theme()
    size = min(size, PAGE_WIDTH / len(curves))
    fig, axes = plt.subplots(1, len(curves), figsize=(size * len(curves), size + 0.3),
                             squeeze=False, layout="constrained")
    for ax, (panel, by_init) in zip(axes.flat, curves.items()):
        for i, (init, (y, s)) in enumerate(by_init.items()):
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, color=colour(init, i), label=f"{init}: {roc_auc_score(y, s):.3f}")
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls=":")
        ax.set(title=panel, xlabel="false positive rate", ylabel="true positive rate",
               xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
        ax.legend(title="init: test AUC", loc="lower right", fontsize="small",
                  title_fontsize="small", frameon=True)
    return fig


def embed_2d(X: np.ndarray, method: str = "umap", seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """2-D coordinates of feature rows: UMAP (``umap``) or the first two principal components
    (``pca``), on standardised features."""
    from sklearn.preprocessing import StandardScaler

    X = StandardScaler().fit_transform(np.asarray(X, dtype=np.float64))
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(X)
    if method == "umap":
        import warnings

        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reducer = umap.UMAP(n_neighbors=min(n_neighbors, len(X) - 1), random_state=seed)
            return reducer.fit_transform(X)
    raise ValueError(f"method must be 'umap' or 'pca', got {method!r}")


def embedding_panels(coords: Mapping[str, np.ndarray], y: np.ndarray,
                     class_names: tuple[str, str] = ("negative", "positive"),
                     method: str = "UMAP", size: float = 3.6) -> plt.Figure:
    """One scatter per init of 2-D embedding coordinates, coloured by label."""
    use_book_theme()
    y = np.asarray(y)
    size = min(size, PAGE_WIDTH / len(coords))
    fig, axes = plt.subplots(1, len(coords), figsize=(size * len(coords), size + 0.4),
                             squeeze=False, layout="constrained")
    label = np.where(y == 1, class_names[1], class_names[0])
    palette = {class_names[0]: "0.65", class_names[1]: "C3"}
    for k, (ax, (name, xy)) in enumerate(zip(axes.flat, coords.items())):
        sns.scatterplot(x=xy[:, 0], y=xy[:, 1], hue=label, hue_order=list(class_names),
                        palette=palette, s=10, alpha=0.7, linewidth=0, ax=ax, legend=k == 0)
        ax.set(title=name, xticks=[], yticks=[], xlabel=f"{method} 1", ylabel=f"{method} 2")
    _figure_legend(fig, axes.flat[0], "label")
    return fig
