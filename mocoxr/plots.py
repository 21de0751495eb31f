"""Figures and tables the book's notebooks show; each function returns a matplotlib Figure
(or a DataFrame) and computes nothing the pipeline does not already store.

Colours are fixed per init across the book: MoCo blue, the baseline (random or ImageNet)
orange; the paper's values are drawn dashed with open markers in the same colours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

MEAN_DRAW = -1  # experiments.MEAN_DRAW: the draw-averaged row of each (experiment, init, fraction)
PAPER_RESULTS = Path(__file__).resolve().parent / "resources" / "paper_results.csv"
INIT_COLOURS = {"moco": "C0", "random": "C1", "imagenet": "C1"}
EXPERIMENT_TITLES = {
    "linear": "Linear probe",
    "finetune": "End-to-end fine-tuning",
    "shenzhen_linear": "Shenzhen: linear probe",
    "shenzhen_finetune": "Shenzhen: fine-tuning",
}


def colour(init: str, i: int = 0) -> str:
    """The book-wide colour of an init (MoCo C0, random/imagenet C1, others in turn)."""
    return INIT_COLOURS.get(str(init), f"C{(i + 2) % 10}")


def pct(fraction: float) -> str:
    """0.001 -> '0.1%', 0.25 -> '25%', 0.0625 -> '6.25%'."""
    return f"{100 * float(fraction):g}%"


# ----------------------------------------------------------------------------- images


def image_grid(images: Sequence[np.ndarray], titles: Sequence[str] | None = None, ncols: int = 6,
               size: float = 1.7, title_colours: Sequence[str] | None = None) -> plt.Figure:
    """Gray images in a grid, one title per image (optionally coloured)."""
    n = len(images)
    if n == 0:
        raise ValueError("image_grid: no images")
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * 1.1), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(np.asarray(images[i]).squeeze(), cmap="gray", vmin=0,
                  vmax=1 if np.asarray(images[i]).dtype.kind == "f" else 255)
        if titles is not None:
            ax.set_title(titles[i], fontsize=8,
                         color=title_colours[i] if title_colours is not None else "black")
    fig.tight_layout()
    return fig


def augmented_views(originals: np.ndarray, view_q: np.ndarray, view_k: np.ndarray,
                    size: float = 1.7) -> plt.Figure:
    """Three rows: the images, the query view and the key view MoCo compares."""
    n = len(originals)
    if not (len(view_q) == len(view_k) == n) or n == 0:
        raise ValueError(f"need the same positive number of originals and views, got "
                         f"{n}, {len(view_q)}, {len(view_k)}")
    fig, axes = plt.subplots(3, n, figsize=(size * n, size * 3.3), squeeze=False)
    for row, (name, imgs) in enumerate([("image", originals), ("view 1 (query)", view_q),
                                        ("view 2 (key)", view_k)]):
        for j in range(n):
            ax = axes[row, j]
            img = np.asarray(imgs[j]).squeeze()
            ax.imshow(img, cmap="gray", vmin=0, vmax=1 if img.dtype.kind == "f" else 255)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.tight_layout()
    return fig


def count_bars(counts: pd.DataFrame, index: str, columns: Sequence[str], title: str = "",
               ylabel: str = "images") -> plt.Figure:
    """Stacked bars of ``columns`` for each value of ``index`` (e.g. label counts per policy)."""
    data = counts.set_index(index)[list(columns)]
    fig, ax = plt.subplots(figsize=(1.4 + 1.3 * len(data), 3.2))
    bottom = np.zeros(len(data))
    for i, col in enumerate(columns):
        vals = data[col].to_numpy(dtype=float)
        bars = ax.bar(data.index.astype(str), vals, bottom=bottom, label=col, color=f"C{i}")
        for b, v, y0 in zip(bars, vals, bottom):
            if v > 0:
                ax.text(b.get_x() + b.get_width() / 2, y0 + v / 2, f"{int(v)}", ha="center",
                        va="center", fontsize=8, color="white")
        bottom += vals
    ax.set_ylabel(ylabel)
    ax.set_xlabel(index)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- pretraining


def pretraining_curves(log: pd.DataFrame, monitor: str | Sequence[str] = ("knn_auc", "linear_auc"),
                       smooth: int = 20) -> plt.Figure:
    """InfoNCE loss per step (raw and a running mean) and, when logged, the monitor metrics."""
    if "loss" not in log or "step" not in log:
        raise ValueError(f"loss log needs columns step and loss, has {list(log.columns)}")
    names = [monitor] if isinstance(monitor, str) else list(monitor)
    names = [m for m in names if m in log and log[m].notna().any()]
    fig, axes = plt.subplots(1, 2 if names else 1, figsize=(10 if names else 5.5, 3.4),
                             squeeze=False)
    ax = axes[0, 0]
    loss = log.dropna(subset=["loss"])
    ax.plot(loss["step"], loss["loss"], color="C0", alpha=0.3, lw=0.8, label="per step")
    w = max(1, min(smooth, len(loss) // 5 or 1))
    ax.plot(loss["step"], loss["loss"].rolling(w, min_periods=1).mean(), color="C0",
            label=f"running mean ({w} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("InfoNCE loss")
    ax.set_title("MoCo pretraining loss")
    ax.legend(fontsize=8)
    if names:
        ax2 = axes[0, 1]
        for i, name in enumerate(names):
            m = log.dropna(subset=[name])
            ax2.plot(m["step"], m[name], "o-", color=f"C{i + 2}", label=name.replace("_", " "))
        ax2.axhline(0.5, color="0.7", lw=0.8, ls=":")
        ax2.set_xlabel("step")
        ax2.set_ylabel("validation AUC")
        ax2.set_title("Representation quality during pretraining")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- results


def mean_rows(results: pd.DataFrame, experiment: str, backbone: str | None = None) -> pd.DataFrame:
    """The draw-averaged rows (``draw == -1``) of one experiment, sorted by init and fraction."""
    r = results[(results["experiment"] == experiment) & (results["draw"] == MEAN_DRAW)]
    if backbone is not None:
        r = r[r["backbone"] == backbone]
    return r.sort_values(["init", "label_fraction"]).reset_index(drop=True)


def _fraction_axis(ax, fractions: Sequence[float]) -> None:
    ax.set_xscale("log")
    fr = sorted(set(float(f) for f in fractions))
    ax.set_xticks(fr)
    ax.set_xticklabels([pct(f) for f in fr])
    ax.minorticks_off()
    ax.set_xlabel("label fraction (log scale)")


def auc_vs_fraction(results: pd.DataFrame, experiment: str, backbone: str | None = None,
                    paper: pd.DataFrame | None = None, ax=None, title: str | None = None):
    """Mean AUC over draws against label fraction (log x) with its 95% CI band, one line per
    init; optionally the paper's values (dashed, grey). Returns the Figure."""
    rows = mean_rows(results, experiment, backbone)
    if rows.empty:
        raise ValueError(f"no draw-averaged rows for experiment {experiment!r}, backbone {backbone!r}")
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (init, g) in enumerate(rows.groupby("init", sort=False)):
        c = colour(init, i)
        ax.plot(g["label_fraction"], g["auc"], "o-", color=c, label=f"{init} (ours)")
        ax.fill_between(g["label_fraction"], g["ci_low"], g["ci_high"], color=c, alpha=0.18, lw=0)
    fractions = list(rows["label_fraction"])
    if paper is not None:
        p = paper[paper["experiment"] == experiment]
        if backbone is not None:
            p = p[p["backbone"] == backbone]
        for i, (init, g) in enumerate(p.groupby("init")):
            g = g.sort_values("label_fraction")
            ax.plot(g["label_fraction"], g["auc"], ls="--", marker="s", mfc="white", ms=4,
                    color=colour(init, i), alpha=0.8, lw=1, label=f"{init} (paper)")
        fractions += list(p["label_fraction"])
    _fraction_axis(ax, fractions)
    ax.set_ylabel("test AUC (mean over draws, 95% CI)")
    ax.set_title(title or EXPERIMENT_TITLES.get(experiment, experiment))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if fig is not None:
        fig.tight_layout()
    return fig or ax.figure


def delta_plot(deltas: pd.DataFrame, experiments: Sequence[str], backbone: str | None = None,
               paper: pd.DataFrame | None = None, ax=None, title: str = "MoCo minus baseline"):
    """Paired-bootstrap AUC differences with 95% CIs against label fraction (log x), one series
    per experiment (offset sideways so the bars do not overlap); zero marked. Optionally the
    paper's differences (open markers)."""
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
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
    if paper is not None:
        for i, exp in enumerate(experiments):
            p = paper_deltas(paper, exp, backbone)
            if len(p):
                ax.plot(p["label_fraction"], p["delta"], ls="--", marker="o", mfc="white",
                        color=f"C{i + 2}", alpha=0.7, label=f"{EXPERIMENT_TITLES.get(exp, exp)} (paper)")
                fractions += list(p["label_fraction"])
    if not fractions:
        raise ValueError(f"no deltas for experiments {list(experiments)}, backbone {backbone!r}")
    ax.axhline(0, color="black", lw=0.8)
    _fraction_axis(ax, fractions)
    ax.set_ylabel("AUC difference (95% CI)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if fig is not None:
        fig.tight_layout()
    return fig or ax.figure


def seed_effects(per_seed: pd.DataFrame, pooled: pd.DataFrame, experiments: Sequence[str],
                 backbone: str | None = None, size: float = 3.6) -> plt.Figure:
    """One panel per experiment: each seed's paired delta as a grey point (its own test-set
    CI as a thin bar), the pooled mean over seeds with its CI (seed spread and test sampling)
    in colour, against label fraction (log x); zero marked."""
    exps = [e for e in experiments if (pooled["experiment"] == e).any()]
    if not exps:
        raise ValueError(f"no pooled deltas for experiments {list(experiments)}")
    fig, axes = plt.subplots(1, len(exps), figsize=(size * len(exps), size * 0.85), squeeze=False)
    for i, (ax, exp) in enumerate(zip(axes[0], exps)):
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
        ax.set_title(EXPERIMENT_TITLES.get(exp, exp), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MoCo minus baseline (AUC)")
    axes[0][0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def roc_panels(curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
               size: float = 3.4) -> plt.Figure:
    """ROC curves: one panel per key of ``curves`` (e.g. '1% labels'), one line per init
    (``{panel: {init: (y, scores)}}``), AUC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, axes = plt.subplots(1, len(curves), figsize=(size * len(curves), size), squeeze=False)
    for ax, (panel, by_init) in zip(axes.flat, curves.items()):
        for i, (init, (y, s)) in enumerate(by_init.items()):
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, color=colour(init, i), label=f"{init}: AUC {roc_auc_score(y, s):.3f}")
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls=":")
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_aspect("equal")
    fig.tight_layout()
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
    y = np.asarray(y)
    fig, axes = plt.subplots(1, len(coords), figsize=(size * len(coords), size), squeeze=False)
    for ax, (name, xy) in zip(axes.flat, coords.items()):
        for cls, c in ((0, "0.65"), (1, "C3")):
            m = y == cls
            ax.scatter(xy[m, 0], xy[m, 1], s=7, alpha=0.7, color=c, label=class_names[cls], lw=0)
        ax.set_title(f"{name}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(f"{method} 1")
        ax.set_ylabel(f"{method} 2")
    axes.flat[0].legend(fontsize=8, markerscale=2)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- tables


def paper_results(path: str | Path = PAPER_RESULTS) -> pd.DataFrame:
    """The published MoCo-CXR AUCs (packaged copy; its header comment names the source)."""
    return pd.read_csv(path, comment="#")


def paper_deltas(paper: pd.DataFrame, experiment: str, backbone: str | None = None) -> pd.DataFrame:
    """The paper's MoCo minus ImageNet AUC differences per label fraction (from its figures)."""
    p = paper[paper["experiment"] == experiment]
    if backbone is not None:
        p = p[p["backbone"] == backbone]
    wide = p.pivot_table(index=["backbone", "label_fraction"], columns="init", values="auc")
    if not {"moco", "imagenet"} <= set(wide.columns):
        return pd.DataFrame(columns=["backbone", "label_fraction", "delta"])
    out = (wide["moco"] - wide["imagenet"]).rename("delta").reset_index()
    return out.sort_values(["backbone", "label_fraction"]).reset_index(drop=True)


def fmt_ci(value: float, lo: float, hi: float, signed: bool = False) -> str:
    """'0.812 [0.790, 0.833]' (or '+0.041 [+0.012, +0.070]'); '' for a missing value."""
    if value is None or not np.isfinite(value):
        return ""
    f = "{:+.3f}" if signed else "{:.3f}"
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return f.format(value)
    return f"{f.format(value)} [{f.format(lo)}, {f.format(hi)}]"


def results_table(results: pd.DataFrame, deltas: pd.DataFrame, experiments: Sequence[str],
                  baseline: str = "random") -> pd.DataFrame:
    """One row per (experiment, backbone, label fraction): draw-averaged AUC [95% CI] of MoCo
    and of the baseline, and the paired difference [95% CI]; plus numeric ``label_fraction``."""
    rows = []
    for exp in experiments:
        ours = mean_rows(results, exp)
        for (bb, f), g in ours.groupby(["backbone", "label_fraction"]):
            get = {r["init"]: r for _, r in g.iterrows()}
            m, b = get.get("moco"), get.get(baseline)
            d = deltas[(deltas["experiment"] == exp) & (deltas["backbone"] == bb)
                       & np.isclose(deltas["label_fraction"], f)]
            rows.append({
                "experiment": exp,
                "backbone": bb,
                "label_fraction": float(f),
                "labels": pct(f),
                "MoCo": fmt_ci(m["auc"], m["ci_low"], m["ci_high"]) if m is not None else "",
                baseline: fmt_ci(b["auc"], b["ci_low"], b["ci_high"]) if b is not None else "",
                "difference": fmt_ci(d["delta"].iloc[0], d["ci_low"].iloc[0], d["ci_high"].iloc[0],
                                     signed=True) if len(d) else "",
            })
    return pd.DataFrame(rows, columns=["experiment", "backbone", "label_fraction", "labels", "MoCo",
                                       baseline, "difference"])


def comparison_table(results: pd.DataFrame, deltas: pd.DataFrame, paper: pd.DataFrame,
                     experiments: Sequence[str] = ("linear", "finetune"),
                     baseline: str = "random") -> pd.DataFrame:
    """:func:`results_table` beside the paper's values, one row per (experiment, backbone,
    label fraction) that we ran. The paper's baseline is ImageNet initialisation."""
    ours = results_table(results, deltas, experiments, baseline)
    out = []
    for _, r in ours.iterrows():
        p = paper[(paper["experiment"] == r["experiment"]) & (paper["backbone"] == r["backbone"])
                  & np.isclose(paper["label_fraction"], r["label_fraction"])]
        cells = {}
        for init in ("moco", "imagenet"):
            q = p[p["init"] == init]
            cells[init] = (fmt_ci(q["auc"].iloc[0], q["ci_low"].iloc[0], q["ci_high"].iloc[0])
                           if len(q) else "")
            cells[init + "_v"] = float(q["auc"].iloc[0]) if len(q) else np.nan
        diff = cells["moco_v"] - cells["imagenet_v"]
        out.append({
            "experiment": r["experiment"], "backbone": r["backbone"], "labels": r["labels"],
            "ours: MoCo": r["MoCo"], f"ours: {baseline}": r[baseline],
            "ours: difference": r["difference"],
            "paper: MoCo": cells["moco"], "paper: ImageNet": cells["imagenet"],
            "paper: difference": f"{diff:+.3f}" if np.isfinite(diff) else "",
        })
    return pd.DataFrame(out)


def _effect(frame: pd.DataFrame, experiment: str, backbone: str) -> pd.DataFrame:
    d = frame[(frame["experiment"] == experiment) & (frame["backbone"] == backbone)]
    return d.sort_values("label_fraction").reset_index(drop=True)


def _above(a: pd.Series, b: pd.Series | None = None) -> bool:
    """``a``'s 95% CI lies wholly above zero (``b`` None) or wholly above ``b``'s CI. Intervals
    that touch or overlap never count: a point estimate alone decides nothing."""
    if b is None:
        return bool(np.isfinite(a["ci_low"]) and a["ci_low"] > 0)
    return bool(np.isfinite(a["ci_low"]) and np.isfinite(b["ci_high"]) and a["ci_low"] > b["ci_high"])


def findings(deltas: pd.DataFrame, paper: pd.DataFrame, backbone: str = "resnet18") -> pd.DataFrame:
    """The paper's three qualitative findings, checked on our paired deltas: (1) MoCo beats the
    baseline for the linear probe at the smallest label fraction, (2) that gain shrinks from the
    smallest to the largest fraction, (3) it is larger for the linear probe than for
    fine-tuning at the smallest fraction. A finding *holds* only when the CIs say so: (1) the
    delta's CI is above zero, (2) and (3) the first delta's CI lies wholly above the second's
    (non-overlapping 95% CIs: conservative), and for (2) there is a gain to shrink (1). Columns: finding, ours, paper, holds ("yes", "no",
    or "not run" when its inputs are missing)."""
    lin, ft = _effect(deltas, "linear", backbone), _effect(deltas, "finetune", backbone)
    plin, pft = paper_deltas(paper, "linear", backbone), paper_deltas(paper, "finetune", backbone)
    names = ("linear probe: MoCo beats the baseline with the fewest labels (95% CI above 0)",
             "linear probe: the gain shrinks as labels grow (CIs apart)",
             "the linear probe gains more than fine-tuning with the fewest labels (CIs apart)")
    rows = {n: {"finding": n, "ours": "not run", "paper": "", "holds": "not run"} for n in names}

    def add(name: str, ok: bool, ours: str, theirs: str) -> None:
        rows[name].update(ours=ours, paper=theirs, holds="yes" if ok else "no")

    ci = lambda r: fmt_ci(r["delta"], r["ci_low"], r["ci_high"], signed=True)  # noqa: E731
    if len(lin):
        s, lg = lin.iloc[0], lin.iloc[-1]
        add(names[0], _above(s), f"{ci(s)} at {pct(s['label_fraction'])}",
            f"{plin['delta'].iloc[0]:+.3f} at {pct(plin['label_fraction'].iloc[0])}" if len(plin) else "")
        add(names[1], len(lin) > 1 and _above(s) and _above(s, lg),  # a gain, then less
            f"{ci(s)} at {pct(s['label_fraction'])} -> {ci(lg)} at {pct(lg['label_fraction'])}",
            f"{plin['delta'].iloc[0]:+.3f} -> {plin['delta'].iloc[-1]:+.3f}" if len(plin) else "")
    if len(lin) and len(ft):
        s, f0 = lin.iloc[0], ft.iloc[0]
        add(names[2], _above(s, f0), f"{ci(s)} vs {ci(f0)}",
            f"{plin['delta'].iloc[0]:+.3f} vs {pft['delta'].iloc[0]:+.3f}" if len(plin) and len(pft) else "")
    return pd.DataFrame(list(rows.values()), columns=["finding", "ours", "paper", "holds"])
