"""Tables, CI formatting and verdicts the book's notebooks show: DataFrames and strings built
from ``results.csv`` / ``deltas.csv`` and the paper's published AUCs; no figures (those are in
:mod:`mocoxr.plots`), nothing the pipeline does not already store.

**Verdicts.** :func:`findings` checks the paper's three qualitative claims on our paired deltas.
A claim holds only when the 95% CIs say so (:func:`_above`): a point estimate alone decides
nothing, and intervals that touch or overlap never count. :func:`cell_verdict` gives each
(experiment, label fraction) cell one word against the paper's effect there, and
:func:`min_detectable_effect` the effect the design could have seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from scipy import stats

from mocoxr.evaluate import MEAN_DRAW

PAPER_RESULTS = Path(__file__).resolve().parent / "resources" / "paper_results.csv"
EXPERIMENT_TITLES = {
    "linear": "Linear probe",
    "finetune": "End-to-end fine-tuning",
    "shenzhen_linear": "Shenzhen: linear probe",
    "shenzhen_finetune": "Shenzhen: fine-tuning",
}


REPRODUCED, SMALLER, INCONCLUSIVE = "reproduced", "smaller than the paper's", "inconclusive"
CONSISTENT, LARGER = "consistent with no gain", "larger than the paper's"
NO_GAIN = 0.005  # a paper effect at most this (read off its figures, +-0.003) is "no gain"
CHEXPERT_FRONTAL_TRAIN = 191_027  # frontal images in CheXpert-v1.0 train.csv: the paper's pool


def paper_count(fraction: float, pool: int = CHEXPERT_FRONTAL_TRAIN) -> int:
    """About how many labelled images the paper's ``fraction`` of CheXpert held."""
    return int(round(float(fraction) * pool))


def cell_verdict(ci_low: float, ci_high: float, paper_effect: float | None = None) -> str:
    """One cell's verdict from the 95% CI of MoCo minus baseline and the paper's effect.

    Where the paper found a gain (or gave none to compare, e.g. Shenzhen): ``reproduced`` when
    the CI lies above zero, ``smaller than the paper's`` when it lies below the paper's effect,
    else ``inconclusive``. Where the paper found no gain (effect <= ``NO_GAIN``, e.g.
    fine-tuning with all labels): ``larger``/``smaller than the paper's`` when the CI lies
    above/below it, else ``consistent with no gain``.
    """
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return INCONCLUSIVE
    known = paper_effect is not None and np.isfinite(paper_effect)
    if known and paper_effect <= NO_GAIN:
        return LARGER if ci_low > paper_effect else SMALLER if ci_high < paper_effect else CONSISTENT
    if ci_low > 0:
        return REPRODUCED
    if known and ci_high < paper_effect:
        return SMALLER
    return INCONCLUSIVE


def min_detectable_effect(ci_low: float, ci_high: float, n_seeds: int = 1, power: float = 0.8,
                          alpha: float = 0.05) -> float:
    """The smallest true difference a two-sided test at ``alpha`` detects with ``power``, given
    a CI of this width: ``(t_{1-alpha/2} + t_{power}) x SE``, ``SE`` read off the CI (Student's
    t with ``n_seeds - 1`` degrees of freedom, the normal for one seed)."""
    q = (lambda p: stats.t.ppf(p, n_seeds - 1)) if n_seeds > 1 else stats.norm.ppf
    se = (ci_high - ci_low) / (2 * q(1 - alpha / 2))
    return float((q(1 - alpha / 2) + q(power)) * se)


def paper_effect(paper: pd.DataFrame, experiment: str, backbone: str, fraction: float) -> float:
    """The paper's MoCo minus ImageNet difference at one cell, NaN where it has none."""
    d = paper_deltas(paper, experiment, backbone)
    hit = d[np.isclose(d["label_fraction"], fraction)]
    return float(hit["delta"].iloc[0]) if len(hit) else float("nan")


def pct(fraction: float) -> str:
    """0.001 -> '0.1%', 0.25 -> '25%', 0.0625 -> '6.25%'."""
    return f"{100 * float(fraction):g}%"


def mean_rows(results: pd.DataFrame, experiment: str, backbone: str | None = None) -> pd.DataFrame:
    """The draw-averaged rows (``draw == MEAN_DRAW``) of one experiment, sorted by init and fraction."""
    r = results[(results["experiment"] == experiment) & (results["draw"] == MEAN_DRAW)]
    if backbone is not None:
        r = r[r["backbone"] == backbone]
    return r.sort_values(["init", "label_fraction"]).reset_index(drop=True)


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
                "n_labelled": int((m if m is not None else b)["n_train"]),
                "MoCo": fmt_ci(m["auc"], m["ci_low"], m["ci_high"]) if m is not None else "",
                baseline: fmt_ci(b["auc"], b["ci_low"], b["ci_high"]) if b is not None else "",
                "difference": fmt_ci(d["delta"].iloc[0], d["ci_low"].iloc[0], d["ci_high"].iloc[0],
                                     signed=True) if len(d) else "",
            })
    return pd.DataFrame(rows, columns=["experiment", "backbone", "label_fraction", "labels",
                                       "n_labelled", "MoCo", baseline, "difference"])


def comparison_table(results: pd.DataFrame, deltas: pd.DataFrame, paper: pd.DataFrame,
                     experiments: Sequence[str] = ("linear", "finetune"),
                     baseline: str = "random") -> pd.DataFrame:
    """:func:`results_table` beside the paper's values, one row per (experiment, backbone,
    label fraction) that we ran, with our number of labelled images beside the paper's (about
    ``paper_count``) and the cell's :func:`cell_verdict`. The paper's baseline is ImageNet
    initialisation."""
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
        d = deltas[(deltas["experiment"] == r["experiment"]) & (deltas["backbone"] == r["backbone"])
                   & np.isclose(deltas["label_fraction"], r["label_fraction"])]
        verdict = cell_verdict(d["ci_low"].iloc[0], d["ci_high"].iloc[0], diff) if len(d) else ""
        out.append({
            "experiment": r["experiment"], "backbone": r["backbone"], "labels": r["labels"],
            "labelled images": f"{r['n_labelled']:,} (paper ≈{paper_count(r['label_fraction']):,})",
            "ours: MoCo": r["MoCo"], f"ours: {baseline}": r[baseline],
            "ours: difference": r["difference"],
            "paper: MoCo": cells["moco"], "paper: ImageNet": cells["imagenet"],
            "paper: difference": f"{diff:+.3f}" if np.isfinite(diff) else "",
            "verdict": verdict,
        })
    return pd.DataFrame(out)


def _effect(frame: pd.DataFrame, experiment: str, backbone: str) -> pd.DataFrame:
    d = frame[(frame["experiment"] == experiment) & (frame["backbone"] == backbone)]
    return d.sort_values("label_fraction").reset_index(drop=True)


def _signed_ci(row: pd.Series) -> str:
    """A delta row's '+0.041 [+0.012, +0.070]'."""
    return fmt_ci(row["delta"], row["ci_low"], row["ci_high"], signed=True)


def _above(a: pd.Series, b: pd.Series | None = None) -> bool:
    """``a``'s 95% CI lies wholly above zero (``b`` None) or wholly above ``b``'s CI. Intervals
    that touch or overlap never count: a point estimate alone decides nothing."""
    if b is None:
        return bool(np.isfinite(a["ci_low"]) and a["ci_low"] > 0)
    return bool(np.isfinite(a["ci_low"]) and np.isfinite(b["ci_high"]) and a["ci_low"] > b["ci_high"])


def findings(deltas: pd.DataFrame, paper: pd.DataFrame, backbone: str = "resnet18") -> pd.DataFrame:
    """The paper's three qualitative findings, checked on our paired deltas.

    (1) MoCo beats the baseline for the linear probe at the smallest label fraction; (2) that
    gain shrinks from the smallest to the largest fraction; (3) it is larger for the linear
    probe than for fine-tuning at the smallest fraction. A finding *holds* only when the CIs
    say so: (1) the delta's CI is above zero; (2) and (3) the first delta's CI lies wholly above
    the second's (non-overlapping 95% CIs: conservative), and for (2) there is a gain to shrink.
    Columns: finding, ours, paper, holds ("yes", "no", or "not run" when inputs are missing).
    """
    lin, ft = _effect(deltas, "linear", backbone), _effect(deltas, "finetune", backbone)
    plin, pft = paper_deltas(paper, "linear", backbone), paper_deltas(paper, "finetune", backbone)
    names = ("linear probe: MoCo beats the baseline with the fewest labels (95% CI above 0)",
             "linear probe: the gain shrinks as labels grow (CIs apart)",
             "the linear probe gains more than fine-tuning with the fewest labels (CIs apart)")
    rows = {n: {"finding": n, "ours": "not run", "paper": "", "holds": "not run"} for n in names}

    def add(name: str, ok: bool, ours: str, theirs: str) -> None:
        rows[name].update(ours=ours, paper=theirs, holds="yes" if ok else "no")

    ci = _signed_ci
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


def compare_runs(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str],
                 paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Two runs' paired differences (``deltas.csv`` rows, e.g. one seed in bf16 and in fp32)
    cell by cell: each difference [95% CI] and :func:`cell_verdict`, the gap between them,
    whether each lies inside the other's CI, and whether the verdicts agree. Cells only one
    run has are left out."""
    on = ["experiment", "backbone", "label_fraction", "comparison"]
    cols = on + ["delta", "ci_low", "ci_high"]
    both = a[cols].merge(b[cols], on=on, suffixes=("_a", "_b"))
    rows = []
    for _, r in both.sort_values(on).iterrows():
        effect = (paper_effect(paper, r["experiment"], r["backbone"], r["label_fraction"])
                  if paper is not None else None)
        va, vb = (cell_verdict(r[f"ci_low_{s}"], r[f"ci_high_{s}"], effect) for s in "ab")
        rows.append({
            "experiment": r["experiment"], "backbone": r["backbone"],
            "labels": pct(r["label_fraction"]), "comparison": r["comparison"],
            names[0]: fmt_ci(r["delta_a"], r["ci_low_a"], r["ci_high_a"], signed=True),
            names[1]: fmt_ci(r["delta_b"], r["ci_low_b"], r["ci_high_b"], signed=True),
            "gap": round(float(r["delta_b"] - r["delta_a"]), 4),
            "each inside the other's CI": bool(r["ci_low_a"] <= r["delta_b"] <= r["ci_high_a"]
                                               and r["ci_low_b"] <= r["delta_a"] <= r["ci_high_b"]),
            f"verdict {names[0]}": va, f"verdict {names[1]}": vb, "same verdict": va == vb,
        })
    return pd.DataFrame(rows)
