"""Tests for mocoxr.tables: the paper's values, the result tables and the findings' verdicts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mocoxr import evaluate, tables


def fake_results() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Results (two draws and the draw-averaged row) and deltas of linear and finetune at 1% and
    100% labels: MoCo 0.1 above random; the delta's CI is above zero at 1%, not at 100%."""
    rows, deltas = [], []
    for exp in ("linear", "finetune"):
        for f, base in ((0.01, 0.6), (1.0, 0.8)):
            for init, bump in (("moco", 0.1), ("random", 0.0)):
                for draw in (0, 1, evaluate.MEAN_DRAW):
                    auc = base + bump + (0.01 * draw if draw >= 0 else 0.0)
                    rows.append(dict(experiment=exp, backbone="resnet18", init=init, label_fraction=f,
                                     draw=draw, auc=auc, ci_low=auc - 0.05, ci_high=auc + 0.05,
                                     n_train=10, n_test=100))
            deltas.append(dict(experiment=exp, backbone="resnet18", label_fraction=f,
                               comparison="moco - random", delta=0.1 if f < 1 else 0.02,
                               ci_low=0.05 if f < 1 else -0.01, ci_high=0.15 if f < 1 else 0.05))
    return pd.DataFrame(rows), pd.DataFrame(deltas)


def test_pct():
    assert [tables.pct(f) for f in (0.001, 0.0625, 0.25, 1.0)] == ["0.1%", "6.25%", "25%", "100%"]


def test_fmt_ci():
    assert tables.fmt_ci(0.8123, 0.79, 0.8334) == "0.812 [0.790, 0.833]"
    assert tables.fmt_ci(0.041, 0.012, 0.07, signed=True) == "+0.041 [+0.012, +0.070]"
    assert tables.fmt_ci(float("nan"), 0, 1) == "" and tables.fmt_ci(None, 0, 1) == ""
    assert tables.fmt_ci(0.5, np.nan, np.nan) == "0.500" and tables.fmt_ci(0.5, None, 1) == "0.500"


def test_paper_results_file_names_its_source():
    head = tables.PAPER_RESULTS.read_text().splitlines()[0]
    assert tables.PAPER_RESULTS.parent.name == "resources"
    assert head.startswith("#") and "MoCo-CXR" in head


def test_paper_results_are_the_published_figures():
    p = tables.paper_results()
    assert len(p) == 32 and set(p["init"]) == {"moco", "imagenet"}
    r = p[(p.experiment == "linear") & (p.backbone == "resnet18") & (p.label_fraction == 0.001)]
    assert r.set_index("init")["auc"].to_dict() == {"moco": 0.776, "imagenet": 0.683}
    d = tables.paper_deltas(p, "linear", "resnet18")
    assert d["delta"].iloc[0] == pytest.approx(0.093) and d["delta"].is_monotonic_decreasing
    assert tables.paper_deltas(p[p.init == "moco"], "linear").empty  # no ImageNet: no difference


def test_mean_rows_are_the_draw_averaged_rows():
    res, _ = fake_results()
    m = tables.mean_rows(res, "linear", "resnet18")
    assert len(m) == 4 and (m["draw"] == evaluate.MEAN_DRAW).all()
    assert list(m["init"]) == ["moco", "moco", "random", "random"]
    assert list(m["label_fraction"]) == [0.01, 1.0, 0.01, 1.0]
    assert tables.mean_rows(res, "linear", "densenet121").empty


def test_results_and_comparison_tables():
    res, dl = fake_results()
    rt = tables.results_table(res, dl, ("linear",))
    assert list(rt.columns) == ["experiment", "backbone", "label_fraction", "labels",
                                "n_labelled", "MoCo", "random", "difference"]
    assert list(rt["labels"]) == ["1%", "100%"] and rt["random"].iloc[1] == "0.800 [0.750, 0.850]"
    table = tables.comparison_table(res, dl, tables.paper_results())
    assert len(table) == 4
    row = table[(table.experiment == "linear") & (table.labels == "1%")].iloc[0]
    assert row["ours: MoCo"] == "0.700 [0.650, 0.750]"
    assert row["ours: difference"] == "+0.100 [+0.050, +0.150]"
    assert row["paper: MoCo"] == "0.838" and row["paper: difference"] == "+0.072"
    assert row["verdict"] == "reproduced"  # [+0.050, +0.150] lies above zero
    assert row["labelled images"] == f"{int(row_n(res, 'linear', 0.01))} (paper ≈1,910)"


def row_n(res, experiment, fraction):
    m = tables.mean_rows(res, experiment)
    return m[(m.init == "moco") & np.isclose(m.label_fraction, fraction)]["n_train"].iloc[0]


def test_findings_on_the_fake_run():
    _, dl = fake_results()
    f = tables.findings(dl, tables.paper_results(), "resnet18")
    # CI above 0: yes; 1% [0.05, 0.15] vs 100% [-0.01, 0.05] touch: no; equal deltas: no
    assert list(f["holds"]) == ["yes", "no", "no"]
    assert f["ours"].iloc[0] == "+0.100 [+0.050, +0.150] at 1%"


def test_findings_say_when_inputs_are_missing():
    _, dl = fake_results()
    f = tables.findings(dl[dl.experiment == "linear"], tables.paper_results())
    assert f["ours"].iloc[2] == "not run" and f["holds"].iloc[2] == "not run"
    assert list(tables.findings(dl.iloc[:0], tables.paper_results())["holds"]) == ["not run"] * 3


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
    f = tables.findings(_deltas(rows), tables.paper_results(), "resnet18")
    assert list(f["holds"]) == expected


# ----------------------------------------------------------------------------- cell verdicts


@pytest.mark.parametrize("ci, paper, expected", [
    ((0.01, 0.12), 0.093, "reproduced"),               # above zero
    ((0.02, 0.05), 0.093, "reproduced"),               # above zero, though below the paper's
    ((-0.03, 0.06), 0.093, "smaller than the paper's"),  # wholly below the paper's effect
    ((-0.05, 0.15), 0.093, "inconclusive"),            # includes zero and the paper's effect
    ((-0.02, 0.093), 0.093, "inconclusive"),           # touching the paper's effect is not below
    ((0.0, 0.2), 0.093, "inconclusive"),               # touching zero is not above
    ((0.01, 0.2), float("nan"), "reproduced"),         # no paper value (Shenzhen): above zero
    ((-0.01, 0.2), None, "inconclusive"),
    ((-0.02, 0.01), 0.0, "consistent with no gain"),   # the paper found no gain
    ((0.01, 0.04), 0.0, "larger than the paper's"),
    ((-0.04, -0.01), 0.0, "smaller than the paper's"),
    ((float("nan"), 0.1), 0.093, "inconclusive"),
])
def test_cell_verdict(ci, paper, expected):
    assert tables.cell_verdict(*ci, paper) == expected


def test_min_detectable_effect_has_the_stated_power():
    # one seed (normal): CI +-1.96 SE -> MDE = (1.96 + 0.84) SE
    assert tables.min_detectable_effect(-0.0196, 0.0196, 1) == pytest.approx(0.02802, abs=2e-5)
    # five seeds: Student's t with 4 df, wider than the normal's
    assert tables.min_detectable_effect(-0.0278, 0.0278, 5) == pytest.approx(
        (2.776 + 0.941) * 0.01, abs=2e-4)
    # simulated: a true effect equal to the MDE puts the CI above zero in about 80% of studies
    rng = np.random.default_rng(0)
    se, n = 0.02, 5
    t975 = 2.7764
    true = tables.min_detectable_effect(-t975 * se, t975 * se, n)
    draws = rng.normal(true, se * np.sqrt(n), size=(20000, n))  # per-seed deltas
    m, s = draws.mean(1), draws.std(1, ddof=1) / np.sqrt(n)
    power = np.mean(m - t975 * s > 0)
    assert 0.74 < power < 0.86  # (the SE is estimated here, so about, not exactly, 80%)


def test_paper_counts_and_effects():
    paper = tables.paper_results()
    assert tables.paper_count(0.001) == 191 and tables.paper_count(1.0) == 191_027
    assert tables.paper_effect(paper, "linear", "resnet18", 0.001) == pytest.approx(0.093)
    assert tables.paper_effect(paper, "finetune", "resnet18", 1.0) == pytest.approx(0.0)
    assert np.isnan(tables.paper_effect(paper, "shenzhen_linear", "resnet18", 0.0625))


def test_paper_pool_is_the_real_frontal_count(shared_data):
    csv = shared_data / "chexpert" / "CheXpert-v1.0-small" / "train.csv.gz"
    real = pd.read_csv(csv, usecols=["Frontal/Lateral"])
    assert int((real["Frontal/Lateral"] == "Frontal").sum()) == tables.CHEXPERT_FRONTAL_TRAIN


def test_compare_runs_pairs_cells_and_says_where_they_disagree():
    def deltas(values):
        return pd.DataFrame([{"experiment": "linear", "backbone": "resnet18", "label_fraction": f,
                              "comparison": "moco - random", "delta": d, "ci_low": lo,
                              "ci_high": hi} for f, (d, lo, hi) in values.items()])
    a = deltas({0.01: (0.05, 0.02, 0.08), 0.1: (0.01, -0.02, 0.04), 1.0: (0.03, 0.01, 0.05)})
    b = deltas({0.01: (0.06, 0.03, 0.09), 0.1: (0.05, 0.03, 0.07)})  # no 100% cell
    t = tables.compare_runs(a, b, ("bf16", "fp32"))
    assert list(t["labels"]) == ["1%", "10%"]
    one, ten = t.iloc[0], t.iloc[1]
    assert one["each inside the other's CI"] and one["same verdict"]
    assert one["verdict bf16"] == tables.REPRODUCED and one["gap"] == pytest.approx(0.01)
    assert not ten["each inside the other's CI"] and not ten["same verdict"]
    assert (ten["verdict bf16"], ten["verdict fp32"]) == (tables.INCONCLUSIVE, tables.REPRODUCED)
    assert ten["fp32"] == "+0.050 [+0.030, +0.070]"
