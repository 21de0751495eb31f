"""Tests for mocoxr.plots: each figure draws the given numbers, in the book's colours, page-wide
at most, with its legend titled and off the data."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from mocoxr import calibration, plots, saliency, tables  # noqa: E402
from test_tables import fake_results  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _by_label(ax) -> dict:
    return {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}


def _legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


def _below_the_axes(fig, ax, legend) -> bool:
    fig.canvas.draw()
    box, axbox = legend.get_window_extent(), ax.get_window_extent()
    return box.y1 <= axbox.y0 and not box.overlaps(axbox)


def _seed_tables():
    per_seed = pd.DataFrame([dict(seed=s, experiment="linear", backbone="resnet18",
                                  label_fraction=f, comparison="moco - random", delta=d,
                                  ci_low=d - 0.03, ci_high=d + 0.03)
                             for s, d in ((0, 0.05), (1, 0.07)) for f in (0.01, 1.0)])
    pooled = per_seed.groupby(["experiment", "backbone", "label_fraction", "comparison"],
                              as_index=False)[["delta", "ci_low", "ci_high"]].mean()
    return per_seed, pooled


def test_the_book_theme_is_set_by_every_figure():
    plt.rcdefaults()
    res, _ = fake_results()
    plots.auc_vs_fraction(res, "linear", "resnet18")
    assert matplotlib.rcParams["axes.grid"] and not matplotlib.rcParams["legend.frameon"]
    first = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"][0]
    assert to_hex(first) == to_hex(sns.color_palette("colorblind")[0])


def test_auc_vs_fraction_draws_the_draw_averaged_rows():
    res, _ = fake_results()
    fig = plots.auc_vs_fraction(res, "linear", "resnet18", paper=tables.paper_results())
    ax = fig.axes[0]
    lines = _by_label(ax)
    for init, c in (("moco", "C0"), ("random", "C1")):
        m = tables.mean_rows(res, "linear", "resnet18").query("init == @init")
        line = lines[f"{init} (ours)"]
        assert list(line.get_xdata()) == [0.01, 1.0]
        assert line.get_ydata() == pytest.approx(m["auc"].to_numpy()) and line.get_color() == c
    assert lines["imagenet (paper)"].get_linestyle() == "--"
    assert lines["imagenet (paper)"].get_color() == "C1"
    assert lines["moco (paper)"].get_ydata()[0] == pytest.approx(0.776)
    assert len(ax.collections) == 2  # one CI band per init of ours
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(0.65) and band.max() == pytest.approx(0.95)
    assert ax.get_xscale() == "log" and "100%" in [t.get_text() for t in ax.get_xticklabels()]
    legend = ax.get_legend()
    assert legend.get_title().get_text() == "init"
    assert _legend_texts(legend)[:2] == ["moco (ours)", "random (ours)"]  # ours before the paper
    assert _below_the_axes(fig, ax, legend)
    with pytest.raises(ValueError, match="no draw-averaged rows"):
        plots.auc_vs_fraction(res, "shenzhen_linear")


def test_auc_vs_fraction_draws_into_a_given_panel():
    res, _ = fake_results()
    fig, axes = plots.panels(3)
    assert len(axes) == 3 and len(fig.axes) == 3
    assert fig.get_size_inches()[0] == plots.PAGE_WIDTH
    assert plots.auc_vs_fraction(res, "finetune", ax=axes[2], title="t") is fig
    assert axes[2].get_title() == "t" and len(axes[0].lines) == 0


def test_delta_plot_draws_each_delta_with_its_ci():
    _, dl = fake_results()
    fig = plots.delta_plot(dl, ["linear", "finetune"], "resnet18", paper=tables.paper_results())
    ax = fig.axes[0]
    lin, ft = ax.containers[:2]
    assert lin[0].get_ydata() == pytest.approx([0.1, 0.02])
    assert lin[0].get_xdata()[0] < 0.01 < ft[0].get_xdata()[0]  # offset sideways
    segments = lin[2][0].get_segments()
    assert [tuple(np.round(s[:, 1], 6)) for s in segments] == [(0.05, 0.15), (-0.01, 0.05)]
    assert lin[0].get_color() == "C2" and ft[0].get_color() == "C3"
    legend = ax.get_legend()
    texts = _legend_texts(legend)
    assert texts[0] == "Linear probe (moco - random)" and texts[-1] == "End-to-end fine-tuning (paper)"
    assert legend.get_title().get_text() and _below_the_axes(fig, ax, legend)
    assert _by_label(ax)["Linear probe (paper)"].get_ydata()[0] == pytest.approx(0.093)
    with pytest.raises(ValueError, match="no deltas"):
        plots.delta_plot(dl, ["shenzhen_linear"], "resnet18")


def test_seed_effects_draws_every_seed_and_the_pooled_mean():
    per_seed, pooled = _seed_tables()
    fig = plots.seed_effects(per_seed, pooled, ["linear", "finetune"])
    (ax,) = fig.axes  # finetune has no pooled rows: one panel
    assert len(ax.containers) == 3  # two seeds and the pooled series
    assert ax.containers[2][0].get_ydata() == pytest.approx([0.06, 0.06])
    assert _legend_texts(ax.get_legend()) == ["single seeds (test-set CI)", "mean of 2 seeds (95% CI)"]
    with pytest.raises(ValueError, match="no pooled deltas"):
        plots.seed_effects(per_seed, pooled, ["finetune"])


def test_count_bars_stack_the_counts_first_column_lowest():
    counts = pd.DataFrame({"policy": ["ones", "zeros", "ignore"], "positive": [5, 3, 3],
                           "negative": [10, 12, 10], "dropped": [0, 0, 2]})
    fig = plots.count_bars(counts, "policy", ["positive", "negative", "dropped"],
                           legend_title="label")
    ax = fig.axes[0]
    bars = {}
    for container in ax.containers:
        for patch, x in zip(container, ("ones", "zeros", "ignore")):
            bars.setdefault(x, []).append((patch.get_y(), patch.get_height()))
    assert sorted(bars["ignore"]) == [(0, 3), (3, 10), (13, 2)]
    assert sorted(bars["ones"]) == [(0, 5), (5, 10), (15, 0)]
    assert sorted(t.get_text() for t in ax.texts if t.get_text()) == sorted(["5", "3", "3", "10", "12", "10", "2"])
    assert ax.get_legend().get_title().get_text() == "label"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ones", "zeros", "ignore"]


def test_pretraining_curves_draw_the_loss_and_the_monitors():
    log = pd.DataFrame({"step": range(1, 11), "loss": np.linspace(5, 3, 10),
                        "knn_auc": [0.5] + [np.nan] * 8 + [0.7]})
    fig = plots.pretraining_curves(log, smooth=2)
    loss_ax, mon_ax = fig.axes
    lines = _by_label(loss_ax)
    assert lines["per step"].get_ydata() == pytest.approx(np.linspace(5, 3, 10))
    assert lines["running mean (2 steps)"].get_ydata()[1] == pytest.approx((5 + 5 - 2 / 9) / 2)
    assert list(_by_label(mon_ax)["k-NN AUC"].get_ydata()) == [0.5, 0.7]
    assert _legend_texts(mon_ax.get_legend()) == ["k-NN AUC"]
    one = plots.pretraining_curves(log.drop(columns="knn_auc"))
    assert len(one.axes) == 1
    with pytest.raises(ValueError, match="step and loss"):
        plots.pretraining_curves(log.drop(columns="loss"))


def test_roc_panels_give_each_init_its_auc():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    s = y + rng.random(60)
    fig = plots.roc_panels({"a": {"moco": (y, s), "random": (y, rng.random(60))}, "b": {"moco": (y, s)}})
    ax = fig.axes[0]
    assert _legend_texts(ax.get_legend())[0] == f"moco: {roc_auc_score(y, s):.3f}"
    assert ax.lines[0].get_color() == "C0" and ax.lines[1].get_color() == "C1"
    assert ax.get_title() == "a" and fig.axes[1].get_title() == "b"


def test_embedding_panels_scatter_the_coordinates_by_label():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 8))
    xy = plots.embed_2d(X, method="pca")
    assert xy.shape == (40, 2)
    y = np.arange(40) % 2
    fig = plots.embedding_panels({"moco": xy, "random": xy[::-1]}, y, ("no", "yes"))
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "random"
    points = np.concatenate([c.get_offsets() for c in fig.axes[0].collections])
    assert sorted(map(tuple, points)) == sorted(map(tuple, xy))
    (legend,) = fig.legends
    assert legend.get_title().get_text() == "label" and _legend_texts(legend) == ["no", "yes"]
    with pytest.raises(ValueError, match="umap"):
        plots.embed_2d(X, method="tsne")


def test_image_figures():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (5, 16, 16), dtype=np.uint8)
    fig = plots.image_grid(imgs, [str(i) for i in range(5)], ncols=3, title_colours=["C3"] * 5)
    shown = [a for a in fig.axes if a.images]
    assert len(shown) == 5 and shown[4].get_title() == "4"
    assert (shown[0].images[0].get_array() == imgs[0]).all()
    views = rng.random((5, 1, 16, 16)).astype(np.float32)
    fig = plots.augmented_views(views, views, views)
    assert len(fig.axes) == 15 and fig.axes[5].get_ylabel() == "view 1\n(query)"
    assert not any(line.get_visible() for line in fig.axes[0].get_xgridlines())  # no grid on images
    with pytest.raises(ValueError):
        plots.augmented_views(views, views[:2], views)
    with pytest.raises(ValueError, match="no images"):
        plots.image_grid([])


def _every_figure():
    res, dl = fake_results()
    per_seed, pooled = _seed_tables()
    imgs = np.zeros((12, 8, 8), dtype=np.uint8)
    y = np.arange(20) % 2
    return {
        "auc": lambda: plots.auc_vs_fraction(res, "linear", paper=tables.paper_results()),
        "delta": lambda: plots.delta_plot(dl, ["linear", "finetune"]),
        "seeds": lambda: plots.seed_effects(pd.concat([per_seed, per_seed.assign(experiment="finetune")]),
                                            pd.concat([pooled, pooled.assign(experiment="finetune")]),
                                            ["linear", "finetune"]),
        "grid": lambda: plots.image_grid(imgs, ncols=12, size=2.0),
        "views": lambda: plots.augmented_views(imgs[:8], imgs[:8], imgs[:8], size=2.0),
        "roc": lambda: plots.roc_panels({str(k): {"moco": (y, y)} for k in range(3)}),
        "embedding": lambda: plots.embedding_panels({str(k): np.c_[y, y] for k in range(3)}, y),
        "loss": lambda: plots.pretraining_curves(pd.DataFrame({"step": [0, 1], "loss": [2, 1],
                                                               "knn_auc": [0.5, 0.6]})),
        "counts": lambda: plots.count_bars(pd.DataFrame({"p": list("abcdefgh"), "n": 1}), "p", ["n"]),
        "reliability": lambda: calibration.plot_reliability({"moco": (y, y / 2)}),
        "grad-cam": lambda: saliency.plot_cams(imgs[:2], {str(k): imgs[:2] / 255 for k in range(5)}),
    }


@pytest.mark.parametrize("name", list(_every_figure()))
def test_no_figure_is_wider_than_the_page(name):
    fig = _every_figure()[name]()
    assert fig.get_size_inches()[0] <= plots.PAGE_WIDTH + 1e-9
