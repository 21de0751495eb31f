"""Tests of mocoxr.data.splits: patient and stratified splits, label-fraction subsets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mocoxr.data.splits import (
    CHEXPERT_DRAWS,
    CHEXPERT_FRACTIONS,
    make_label_fraction_subsets,
    split_by_patient,
    split_stratified,
)


def test_split_by_patient_no_leakage_and_seeded():
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"patient": [f"p{i}" for i in rng.integers(0, 300, 2000)],
                       "label": rng.integers(0, 2, 2000)})
    a = split_by_patient(df, val_fraction=0.2, seed=3)
    assert not set(a.patient[a.split == "train"]) & set(a.patient[a.split == "val"])
    assert a.groupby("patient")["split"].nunique().max() == 1
    n_val = a.loc[a.split == "val", "patient"].nunique()
    assert n_val == round(0.2 * df.patient.nunique())
    assert a["split"].tolist() == split_by_patient(df, 0.2, seed=3)["split"].tolist()
    assert a["split"].tolist() != split_by_patient(df, 0.2, seed=4)["split"].tolist()
    # order of rows does not change which patients go to val
    shuffled = split_by_patient(df.sample(frac=1, random_state=0), 0.2, seed=3)
    assert set(shuffled.patient[shuffled.split == "val"]) == set(a.patient[a.split == "val"])
    assert "split" not in df.columns  # input untouched
    with pytest.raises(ValueError, match="val_fraction"):
        split_by_patient(df, val_fraction=1.0)


def test_split_by_patient_tiny_keeps_both_classes_each_side():
    df = pd.DataFrame({"patient": list("abcdefghij"), "label": [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]})
    for seed in range(10):
        s = split_by_patient(df, val_fraction=0.2, seed=seed)
        assert set(s.label[s.split == "val"]) == {0, 1} == set(s.label[s.split == "train"])


def test_label_fraction_subsets_sizes_classes_and_independence():
    rng = np.random.default_rng(0)
    labels = (rng.random(5000) < 0.3).astype(int)
    sub = make_label_fraction_subsets(labels, seed=5)
    assert list(sub.columns) == ["label_fraction", "draw", "row"]
    for f, d in zip(CHEXPERT_FRACTIONS, CHEXPERT_DRAWS):
        part = sub[sub.label_fraction == f]
        assert sorted(part.draw.unique()) == list(range(d))
        for _, g in part.groupby("draw"):
            rows = g["row"].to_numpy()
            assert len(rows) == max(2, round(f * 5000)) and len(np.unique(rows)) == len(rows)
            assert np.all(np.diff(rows) > 0) and rows.min() >= 0 and rows.max() < 5000
            assert set(labels[rows]) == {0, 1}
    full = sub[sub.label_fraction == 1.0]["row"].to_numpy()
    np.testing.assert_array_equal(full, np.arange(5000))
    # draws differ; same seed reproduces; each (fraction, draw) independent of the others
    r = lambda s, f, d: s[(s.label_fraction == f) & (s.draw == d)]["row"].tolist()  # noqa: E731
    assert r(sub, 0.01, 0) != r(sub, 0.01, 1)
    pd.testing.assert_frame_equal(sub, make_label_fraction_subsets(labels, seed=5))
    alone = make_label_fraction_subsets(labels, fractions=(0.01,), draws=(2,), seed=5)
    assert r(alone, 0.01, 1) == r(sub, 0.01, 1)
    assert r(make_label_fraction_subsets(labels, seed=6), 0.01, 0) != r(sub, 0.01, 0)


def test_label_fraction_min_size_and_rare_class():
    labels = np.zeros(1000, int)
    labels[737] = 1
    sub = make_label_fraction_subsets(labels, fractions=(0.001, 0.01), draws=(20, 5), seed=0)
    for (f, d), g in sub.groupby(["label_fraction", "draw"]):
        rows = g["row"].to_numpy()
        assert len(rows) == (2 if f == 0.001 else 10)
        assert 737 in rows and labels[rows].sum() == 1
    tiny = make_label_fraction_subsets(np.array([0, 1, 0, 0, 1]), fractions=(0.001,), draws=(3,))
    assert (tiny.groupby("draw").size() == 2).all()


def test_label_fraction_errors():
    with pytest.raises(ValueError, match="0 positives and 10 negatives"):
        make_label_fraction_subsets(np.zeros(10, int))
    with pytest.raises(ValueError, match="differ in length"):
        make_label_fraction_subsets(np.array([0, 1]), fractions=(0.5,), draws=(1, 2))
    with pytest.raises(ValueError, match="0 < f <= 1"):
        make_label_fraction_subsets(np.array([0, 1]), fractions=(1.5,), draws=(1,))
    with pytest.raises(ValueError, match="0/1"):
        make_label_fraction_subsets(np.array([0, 2]))


def test_split_stratified_proportions_and_seed():
    df = pd.DataFrame({"patient": [f"i{i}" for i in range(200)], "label": [0] * 120 + [1] * 80})
    s = split_stratified(df, seed=1)
    counts = s.groupby(["split", "label"]).size()
    assert counts.to_dict() == {("test", 0): 24, ("test", 1): 16, ("train", 0): 78,
                                ("train", 1): 52, ("val", 0): 18, ("val", 1): 12}
    assert s["split"].tolist() == split_stratified(df, seed=1)["split"].tolist()
    assert s["split"].tolist() != split_stratified(df, seed=2)["split"].tolist()
    small = split_stratified(df.iloc[117:123], seed=0)  # 3 negatives, 3 positives
    assert (small.groupby(["split"])["label"].nunique() == 2).all()
    with pytest.raises(ValueError, match="summing to 1"):
        split_stratified(df, fractions=(0.5, 0.2, 0.2))
