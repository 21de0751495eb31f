"""Tests of mocoxr.data.prepared: prepare_chexpert / prepare_shenzhen write, reuse and
rebuild their manifests, keep patients apart and refuse data too small to evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from data_trees import (  # noqa: F401 (fixtures)
    TARGET,
    real_chexpert,
    real_shenzhen,
    tree,
    write_chexpert,
    write_shenzhen,
)
from PIL import Image

from mocoxr.data.prepared import PreparedDataset, prepare_chexpert, prepare_shenzhen
from mocoxr.data.splits import SHENZHEN_DRAWS, SHENZHEN_FRACTIONS, subset_size


@pytest.fixture(scope="module")
def real_prepared(real_chexpert: Path, tmp_path_factory) -> PreparedDataset:
    out = tmp_path_factory.mktemp("manifests")
    # 0.1% and 1% only: the 10%/100% subsets are checked on synthetic labels (and cost seconds)
    return prepare_chexpert(real_chexpert.parent, out, fractions=(0.001, 0.01), draws=(5, 5),
                            check_images=False)


def test_real_prepare_no_leakage_and_fraction_sizes(real_prepared: PreparedDataset):
    m = real_prepared.manifest
    assert m["split"].value_counts().to_dict() == {"train": 172061, "val": 18966, "test": 202}
    sides = {s: set(m.loc[m["split"] == s, "patient"]) for s in ("train", "val", "test")}
    assert not sides["train"] & sides["val"]
    assert not (sides["train"] | sides["val"]) & sides["test"]
    assert 0.09 < len(sides["val"]) / (len(sides["train"]) + len(sides["val"])) < 0.11
    train_rows = real_prepared.rows("train")
    sizes = real_prepared.subsets.groupby(["label_fraction", "draw"]).size()
    for f, d in ((0.001, 5), (0.01, 5)):
        assert list(sizes[f].index) == list(range(d))
        assert (sizes[f] == subset_size(f, len(train_rows))).all()
        for draw in range(d):
            rows = real_prepared.subset_rows(f, draw)
            assert np.isin(rows, train_rows).all() and len(np.unique(rows)) == len(rows)
            assert set(real_prepared.labels(rows)) == {0, 1}
    assert (subset_size(0.001, len(train_rows)), subset_size(0.01, len(train_rows))) == (172, 1721)


def test_real_shenzhen_prepare_split_and_fractions(real_shenzhen: Path, tmp_path: Path):
    prep = prepare_shenzhen(real_shenzhen, tmp_path)
    m = prep.manifest
    assert m.groupby(["split", "label"]).size().to_dict() == {
        ("test", 0): 3, ("test", 1): 1, ("train", 0): 10, ("train", 1): 1,
        ("val", 0): 2, ("val", 1): 1}
    n_train = len(prep.rows("train"))
    for f, d in zip(SHENZHEN_FRACTIONS, SHENZHEN_DRAWS):
        for draw in range(d):
            rows = prep.subset_rows(f, draw)
            assert len(rows) == subset_size(f, n_train)
            assert set(prep.labels(rows)) == {0, 1}
            assert (m["split"].to_numpy()[rows] == "train").all()
    again = prepare_shenzhen(real_shenzhen, tmp_path)
    pd.testing.assert_frame_equal(again.manifest, m)


def _mtimes(out: Path, name: str) -> dict[str, int]:
    return {f: (out / f).stat().st_mtime_ns for f in (f"{name}.csv", f"{name}_subsets.csv", f"{name}.json")}


def test_prepare_chexpert_writes_reuses_and_rebuilds(tree: Path, tmp_path: Path):
    out = tmp_path / "manifests"
    prep = prepare_chexpert(tree, out, fractions=(0.1, 1.0), draws=(3, 1), val_fraction=0.2)
    m = prep.manifest
    assert {"path", "patient", "study", "view", "label", "raw_label", "split"} <= set(m.columns)
    assert (m["view"] == "frontal").all()
    test = m[m.split == "test"]
    assert test["patient"].tolist() == ["patient00101", "patient00102", "patient00103", "patient00104"]
    assert test["label"].tolist() == [1, 0, 0, 1]  # blank -> 0, uncertain -> 1 (ones)
    assert not set(m.patient[m.split == "train"]) & set(m.patient[m.split == "val"])
    # subsets: manifest rows inside train; train_row indexes the train split
    np.testing.assert_array_equal(prep.rows("train")[prep.subsets["train_row"]], prep.subsets["row"])
    np.testing.assert_array_equal(prep.subset_rows(1.0, 0), prep.rows("train"))
    with pytest.raises(ValueError, match="no subset label_fraction=0.5"):
        prep.subset_rows(0.5, 0)
    first = _mtimes(out, "chexpert")

    again = prepare_chexpert(tree, out, fractions=(0.1, 1.0), draws=(3, 1), val_fraction=0.2)
    assert _mtimes(out, "chexpert") == first
    pd.testing.assert_frame_equal(again.manifest, m)
    pd.testing.assert_frame_equal(again.subsets, prep.subsets)

    other = prepare_chexpert(tree, out, fractions=(0.1, 1.0), draws=(3, 1), val_fraction=0.2, seed=1)
    assert _mtimes(out, "chexpert") != first
    assert other.manifest["split"].tolist() != m["split"].tolist()

    # a changed source CSV rebuilds (same parameters)
    csv = tree / "CheXpert-v1.0-small" / "valid.csv"
    raw = pd.read_csv(csv)
    raw.loc[1, TARGET] = 1.0
    raw.to_csv(csv, index=False)
    changed = prepare_chexpert(tree, out, fractions=(0.1, 1.0), draws=(3, 1), val_fraction=0.2, seed=1)
    assert changed.manifest[changed.manifest.split == "test"]["label"].tolist() == [1, 1, 0, 1]


def test_prepare_chexpert_test_csv_and_leakage(tree: Path, tmp_path: Path):
    other = write_chexpert(tmp_path / "released", "test", [(501, 1, "frontal", 1.0), (502, 1, "frontal", 0.0)],
                           name="CheXpert-v1.0-small", images=False)
    # images of the released test set live next to the CheXpert dir they are resolved against
    cdir = tree / "CheXpert-v1.0-small"
    for rel in pd.read_csv(other)["Path"]:
        img = tree / rel
        img.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((24, 20), np.uint8)).save(img)
    prep = prepare_chexpert(tree, tmp_path / "m", test_csv=other, fractions=(1.0,), draws=(1,))
    test = prep.manifest[prep.manifest.split == "test"]
    assert test["patient"].tolist() == ["patient00501", "patient00502"]
    assert all(p.startswith(str(cdir.resolve())) for p in test["path"])
    with pytest.raises(ValueError, match="test patients also appear"):
        prepare_chexpert(tree, tmp_path / "m2", test_csv=cdir / "train.csv", fractions=(1.0,), draws=(1,))
    with pytest.raises(FileNotFoundError, match="test CSV"):
        prepare_chexpert(tree, tmp_path / "m3", test_csv=tmp_path / "none.csv")


def test_prepare_shenzhen_rebuilds_when_images_change(tmp_path: Path):
    write_shenzhen(tmp_path / "sz" / "CXR_png", [0, 1] * 10)
    out = tmp_path / "m"
    prep = prepare_shenzhen(tmp_path / "sz", out)
    assert len(prep.manifest) == 20 and set(prep.manifest["split"]) == {"train", "val", "test"}
    first = _mtimes(out, "shenzhen")
    prepare_shenzhen(tmp_path / "sz", out)
    assert _mtimes(out, "shenzhen") == first
    write_shenzhen(tmp_path / "sz" / "CXR_png", [1, 0], start=21)
    assert len(prepare_shenzhen(tmp_path / "sz", out).manifest) == 22


def test_doubled_valid_csv_is_refused_with_counts(tree: Path, tmp_path: Path):
    valid = tree / "CheXpert-v1.0-small" / "valid.csv"
    text = valid.read_text()
    valid.write_text(text + "".join(text.splitlines(keepends=True)[1:]))  # rows appended again
    with pytest.raises(ValueError) as err:
        prepare_chexpert(tree, tmp_path / "m", fractions=(1.0,), draws=(1,))
    assert str(valid) in str(err.value) and "5 of 10 rows repeat an image path" in str(err.value)


def test_header_only_train_csv_is_refused_by_name(tree: Path, tmp_path: Path):
    train_csv = tree / "CheXpert-v1.0-small" / "train.csv"
    train_csv.write_text(train_csv.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError) as err:
        prepare_chexpert(tree, tmp_path / "m", fractions=(1.0,), draws=(1,))
    assert f"{train_csv}: the CSV has a header but no rows" in str(err.value)


def test_too_few_shenzhen_images_are_refused_at_the_data_step_with_counts(tmp_path: Path):
    write_shenzhen(tmp_path / "sz" / "CXR_png", [0, 1, 0, 1, 1])
    with pytest.raises(ValueError) as err:
        prepare_shenzhen(tmp_path / "sz", tmp_path / "m", fractions=(1.0,), draws=(1,))
    msg = str(err.value)
    assert "too few images (5 in all" in msg and "short: val" in msg and "val 1 positive / 0 negative" in msg
    assert str(tmp_path / "sz") in msg
