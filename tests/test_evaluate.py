"""Tests for mocoxr.evaluate: AUC, bootstrap CIs, paired deltas, tables and predictions."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from mocoxr import evaluate as ev


def binormal(n: int, auc: float, prevalence: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores whose population AUC is ``auc`` exactly: N(0,1) negatives, N(d,1) positives."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    d = np.sqrt(2) * norm.ppf(auc)
    return y, rng.normal(size=n) + d * y


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)  # many ties
    assert ev.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_weighted_auc_equals_auc_of_explicit_resample():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(size=200) + y, 1)
    idx = rng.integers(0, 200, 200)
    w = np.bincount(idx, minlength=200)[None, :]
    assert ev._weighted_auc(y, s, w)[0] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)


def test_bootstrap_ci_covers_known_auc_at_nominal_rate():
    true_auc, covered = 0.8, 0
    for seed in range(60):
        y, s = binormal(300, true_auc, 0.3, seed)
        auc, lo, hi = ev.bootstrap_auc(y, s, n_boot=300, seed=seed)
        assert lo <= auc <= hi
        covered += lo <= true_auc <= hi
    assert 0.85 <= covered / 60 <= 1.0


def test_ci_narrows_with_more_test_images():
    y1, s1 = binormal(200, 0.8, 0.3, 0)
    y2, s2 = binormal(5000, 0.8, 0.3, 0)
    _, lo1, hi1 = ev.bootstrap_auc(y1, s1, n_boot=300)
    _, lo2, hi2 = ev.bootstrap_auc(y2, s2, n_boot=300)
    assert hi2 - lo2 < (hi1 - lo1) / 3


def test_draws_are_averaged_inside_replicates():
    y, s1 = binormal(400, 0.75, 0.3, 0)
    s2 = s1 + np.random.default_rng(5).normal(size=400)
    auc, lo, hi = ev.bootstrap_auc(y, np.stack([s1, s2]), n_boot=200)
    assert auc == pytest.approx((roc_auc_score(y, s1) + roc_auc_score(y, s2)) / 2)
    assert lo < auc < hi


def test_paired_delta_identical_models_is_exactly_zero():
    y, s = binormal(300, 0.8, 0.3, 2)
    assert ev.paired_bootstrap_delta(y, s, s, n_boot=200) == (0.0, 0.0, 0.0)


def test_paired_delta_detects_a_better_model_and_is_tighter_than_unpaired():
    rng = np.random.default_rng(3)
    y = (rng.random(1000) < 0.3).astype(int)
    shared = rng.normal(size=1000)
    a = shared + 1.6 * y
    b = shared + 1.2 * y + 0.3 * rng.normal(size=1000)
    delta, lo, hi = ev.paired_bootstrap_delta(y, a, b, n_boot=500)
    assert delta == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    assert 0 < lo < delta < hi
    _, alo, ahi = ev.bootstrap_auc(y, a, n_boot=500)
    assert hi - lo < ahi - alo


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="positive and one negative"):
        ev.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="shape"):
        ev.bootstrap_auc([0, 1, 1], np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        ev.roc_auc([0, 1], [0.1, np.nan])


def test_upsert_replaces_rows_with_the_same_key(tmp_path):
    path = tmp_path / "results.csv"
    row = dict(experiment="linear", backbone="resnet18", init="moco", label_fraction=0.01, draw=0,
               auc=0.7, ci_low=0.6, ci_high=0.8, n_train=10, n_test=100)
    ev.upsert_rows(path, [row, {**row, "draw": 1}], ev.RESULTS_COLUMNS, ev.RESULTS_KEY)
    table = ev.upsert_rows(path, [{**row, "auc": 0.75}], ev.RESULTS_COLUMNS, ev.RESULTS_KEY)
    assert len(table) == 2
    reread = pd.read_csv(path)
    assert list(reread.columns) == ev.RESULTS_COLUMNS
    assert reread.loc[reread["draw"] == 0, "auc"].item() == 0.75
    with pytest.raises(ValueError, match="lack columns"):
        ev.upsert_rows(path, [{"experiment": "x"}], ev.RESULTS_COLUMNS, ev.RESULTS_KEY)


def test_predictions_round_trip(tmp_path):
    rows, y, s = np.arange(5), np.array([0, 1, 0, 1, 1]), np.linspace(0, 1, 5)
    path = ev.save_predictions(tmp_path, "linear", "resnet18", "moco", 0.001, 3, rows, y, s)
    assert path.exists() and not list(tmp_path.glob(".*tmp*"))
    r2, y2, s2 = ev.load_predictions(tmp_path, "linear", "resnet18", "moco", 0.001, 3)
    np.testing.assert_array_equal(r2, rows)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_allclose(s2, s)
    with pytest.raises(FileNotFoundError, match="no predictions"):
        ev.load_predictions(tmp_path, "linear", "resnet18", "random", 0.001, 3)
