"""Tests for mocoxr.plots: the figures and tables the notebooks show."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from mocoxr import plots  # noqa: E402


def fake_results() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, deltas = [], []
    for exp in ("linear", "finetune"):
        for f, base in ((0.01, 0.6), (1.0, 0.8)):
            for init, bump in (("moco", 0.1), ("random", 0.0)):
                for draw in (0, 1, -1):
                    auc = base + bump
                    rows.append(dict(experiment=exp, backbone="resnet18", init=init, label_fraction=f,
                                     draw=draw, auc=auc, ci_low=auc - 0.05, ci_high=auc + 0.05,
                                     n_train=10, n_test=100))
            deltas.append(dict(experiment=exp, backbone="resnet18", label_fraction=f,
                               comparison="moco - random", delta=0.1 if f < 1 else 0.02,
                               ci_low=0.05 if f < 1 else -0.01, ci_high=0.15 if f < 1 else 0.05))
    return pd.DataFrame(rows), pd.DataFrame(deltas)


def test_pct():
    assert [plots.pct(f) for f in (0.001, 0.0625, 0.25, 1.0)] == ["0.1%", "6.25%", "25%", "100%"]


def test_paper_results_are_the_published_figures():
    p = plots.paper_results()
    assert len(p) == 32 and set(p["init"]) == {"moco", "imagenet"}
    r = p[(p.experiment == "linear") & (p.backbone == "resnet18") & (p.label_fraction == 0.001)]
    assert r.set_index("init")["auc"].to_dict() == {"moco": 0.776, "imagenet": 0.683}
    d = plots.paper_deltas(p, "linear", "resnet18")
    assert d["delta"].iloc[0] == pytest.approx(0.093) and d["delta"].is_monotonic_decreasing


def test_mean_rows_and_auc_plot_use_the_draw_averaged_rows():
    res, _ = fake_results()
    m = plots.mean_rows(res, "linear", "resnet18")
    assert len(m) == 4 and (m["draw"] == -1).all()
    fig = plots.auc_vs_fraction(res, "linear", "resnet18", paper=plots.paper_results())
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert len(ax.collections) == 2  # one CI band per init
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"moco (ours)", "random (ours)", "moco (paper)"}
    plt.close(fig)
    with pytest.raises(ValueError, match="no draw-averaged rows"):
        plots.auc_vs_fraction(res, "shenzhen_linear")


def test_delta_plot_and_tables():
    res, dl = fake_results()
    fig = plots.delta_plot(dl, ["linear", "finetune"], "resnet18", paper=plots.paper_results())
    assert fig.axes[0].get_xscale() == "log"
    plt.close(fig)
    with pytest.raises(ValueError, match="no deltas"):
        plots.delta_plot(dl, ["shenzhen_linear"], "resnet18")
    table = plots.comparison_table(res, dl, plots.paper_results())
    assert len(table) == 4
    row = table[(table.experiment == "linear") & (table.labels == "1%")].iloc[0]
    assert row["ours: MoCo"] == "0.700 [0.650, 0.750]"
    assert row["ours: difference"] == "+0.100 [+0.050, +0.150]"
    assert row["paper: MoCo"] == "0.838" and row["paper: difference"] == "+0.072"
    f = plots.findings(dl, plots.paper_results(), "resnet18")
    # CI above 0: yes; 1% [0.05, 0.15] vs 100% [-0.01, 0.05] touch: no; equal deltas: no
    assert list(f["holds"]) == ["yes", "no", "no"]
    assert plots.fmt_ci(float("nan"), 0, 1) == "" and plots.fmt_ci(0.5, np.nan, np.nan) == "0.500"


def test_findings_say_when_inputs_are_missing():
    _, dl = fake_results()
    f = plots.findings(dl[dl.experiment == "linear"], plots.paper_results())
    assert f["ours"].iloc[2] == "not run" and f["holds"].iloc[2] == "not run"


def _deltas(rows):
    return pd.DataFrame([dict(experiment=e, backbone="resnet18", label_fraction=f,
                              comparison="moco - random", delta=d, ci_low=lo, ci_high=hi)
                         for e, f, d, lo, hi in rows])


@pytest.mark.parametrize("rows, expected", [
    # noise that a point estimate would call a finding: every verdict must read "no"
    ([("linear", 0.001, 0.009, -0.02, 0.04), ("linear", 1.0, -0.158, -0.274, -0.043),
      ("finetune", 0.001, 0.008, -0.03, 0.05)], ["no", "no", "no"]),
    # the effect, clearly: every verdict reads "yes"
    ([("linear", 0.001, 0.12, 0.08, 0.16), ("linear", 1.0, 0.01, -0.01, 0.03),
      ("finetune", 0.001, 0.0, -0.03, 0.03)], ["yes", "yes", "yes"]),
    # above zero, but the CIs of the two fractions overlap: shrinking is not shown
    ([("linear", 0.001, 0.06, 0.01, 0.11), ("linear", 1.0, 0.03, 0.00, 0.06),
      ("finetune", 0.001, 0.05, 0.00, 0.10)], ["yes", "no", "no"]),
])
def test_findings_hold_only_when_the_cis_say_so(rows, expected):
    f = plots.findings(_deltas(rows), plots.paper_results(), "resnet18")
    assert list(f["holds"]) == expected


def test_image_figures():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (5, 16, 16), dtype=np.uint8)
    fig = plots.image_grid(imgs, [str(i) for i in range(5)], ncols=3)
    assert len([a for a in fig.axes if a.images]) == 5
    plt.close(fig)
    views = rng.random((5, 1, 16, 16)).astype(np.float32)
    fig = plots.augmented_views(views, views, views)
    assert len(fig.axes) == 15
    plt.close(fig)
    with pytest.raises(ValueError):
        plots.augmented_views(views, views[:2], views)
    with pytest.raises(ValueError, match="no images"):
        plots.image_grid([])


def test_curves_roc_and_embedding():
    log = pd.DataFrame({"step": range(1, 11), "loss": np.linspace(5, 3, 10),
                        "knn_auc": [0.5] + [np.nan] * 8 + [0.7]})
    fig = plots.pretraining_curves(log)
    assert len(fig.axes) == 2
    plt.close(fig)
    assert len(plots.pretraining_curves(log.drop(columns="knn_auc")).axes) == 1
    plt.close("all")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    fig = plots.roc_panels({"a": {"moco": (y, y + rng.random(60)), "random": (y, rng.random(60))}})
    assert "AUC" in fig.axes[0].get_legend().get_texts()[0].get_text()
    plt.close(fig)
    X = rng.normal(size=(40, 8))
    xy = plots.embed_2d(X, method="pca")
    assert xy.shape == (40, 2)
    fig = plots.embedding_panels({"moco": xy, "random": xy}, y[:40])
    assert len(fig.axes) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="umap"):
        plots.embed_2d(X, method="tsne")


def test_seed_effects_draws_every_seed_and_the_pooled_mean():
    per_seed = pd.DataFrame([dict(seed=s, experiment="linear", backbone="resnet18",
                                  label_fraction=f, comparison="moco - random", delta=d,
                                  ci_low=d - 0.03, ci_high=d + 0.03)
                             for s, d in ((0, 0.05), (1, 0.07)) for f in (0.01, 1.0)])
    pooled = per_seed.groupby(["experiment", "backbone", "label_fraction", "comparison"],
                              as_index=False)[["delta", "ci_low", "ci_high"]].mean()
    fig = plots.seed_effects(per_seed, pooled, ["linear", "finetune"])
    (ax,) = fig.axes  # finetune has no pooled rows: one panel
    assert len(ax.containers) == 3  # two seeds and the pooled series
    plt.close(fig)
    with pytest.raises(ValueError, match="no pooled deltas"):
        plots.seed_effects(per_seed, pooled, ["finetune"])
