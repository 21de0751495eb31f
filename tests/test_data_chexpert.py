"""Tests of mocoxr.data.chexpert: finding the folder, reading the CSVs, uncertain policies
(synthetic trees, and the real CheXpert CSVs in ../shared/data when present)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from data_trees import TARGET, real_chexpert, tree, write_chexpert  # noqa: F401 (fixtures)

from mocoxr.data.chexpert import UNCERTAIN_POLICIES, find_chexpert_dir, read_chexpert_csv


def test_find_chexpert_dir_accepts_parent_or_dir(tree: Path, tmp_path: Path):
    cdir = (tree / "CheXpert-v1.0-small").resolve()
    assert find_chexpert_dir(tree) == cdir
    assert find_chexpert_dir(cdir) == cdir
    full = tmp_path / "full"
    write_chexpert(full, "valid", [(1, 1, "frontal", 1.0)], name="CheXpert-v1.0", images=False)
    assert find_chexpert_dir(full) == (full / "CheXpert-v1.0").resolve()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="CheXpert-v1.0-small"):
        find_chexpert_dir(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_chexpert_dir(tmp_path / "nope")


def test_read_resolves_paths_patients_views_and_policies(tree: Path):
    csv = tree / "CheXpert-v1.0-small" / "train.csv"
    raw = pd.read_csv(csv)
    df = read_chexpert_csv(csv, frontal_only=False)
    assert list(df.columns) == ["path", "patient", "study", "view", "label", "raw_label"]
    assert len(df) == len(raw)
    for p, rel in zip(df["path"], raw["Path"]):
        assert os.path.isabs(p) and os.path.isfile(p)
        assert p == str((tree / rel).resolve())
    assert df["patient"].tolist() == raw["Path"].str.split("/").str[2].tolist()
    assert df["study"].tolist() == raw["Path"].str.split("/").str[2:4].str.join("/").tolist()
    assert df["view"].tolist() == raw["Frontal/Lateral"].str.lower().tolist()
    np.testing.assert_array_equal(df["raw_label"].to_numpy(), raw[TARGET].to_numpy())
    # blank -> negative; uncertain by policy
    pe = raw[TARGET]
    assert df["label"].tolist() == ((pe == 1) | (pe == -1)).astype(int).tolist()
    zeros = read_chexpert_csv(csv, uncertain_policy="zeros", frontal_only=False)
    assert zeros["label"].tolist() == (pe == 1).astype(int).tolist()
    ignore = read_chexpert_csv(csv, uncertain_policy="ignore", frontal_only=False)
    assert len(ignore) == int((pe != -1).sum()) and (ignore["raw_label"] != -1).all()
    frontal = read_chexpert_csv(csv)
    assert (frontal["view"] == "frontal").all()
    assert len(frontal) == int((raw["Frontal/Lateral"] == "Frontal").sum())
    other = read_chexpert_csv(csv, target="Edema", frontal_only=False)
    assert other["label"].sum() == len(raw)


def test_gz_and_full_resolution_prefix_and_renamed_dir(tmp_path: Path):
    rows = [(1, 1, "frontal", 1.0), (2, 1, "frontal", 0.0)]
    gz = write_chexpert(tmp_path / "a", "train", rows, gz=True)
    df = read_chexpert_csv(gz)
    assert len(df) == 2 and all(os.path.isfile(p) for p in df["path"])
    full = write_chexpert(tmp_path / "b", "train", rows, name="CheXpert-v1.0")
    assert all(os.path.isfile(p) for p in read_chexpert_csv(full)["path"])
    # a dir with another name whose CSV still carries the small prefix
    odd = write_chexpert(tmp_path / "c", "train", rows, name="my_chexpert", prefix="CheXpert-v1.0-small")
    assert all(os.path.isfile(p) for p in read_chexpert_csv(odd)["path"])
    assert find_chexpert_dir(tmp_path / "c" / "my_chexpert") == odd.parent.resolve()


def test_missing_images_one_error_naming_csv_count_and_paths(tree: Path):
    csv = tree / "CheXpert-v1.0-small" / "train.csv"
    df = read_chexpert_csv(csv)
    for p in df["path"][:3]:
        os.remove(p)
    with pytest.raises(FileNotFoundError) as err:
        read_chexpert_csv(csv)
    msg = str(err.value)
    assert str(csv) in msg and f"3 of {len(df)}" in msg and df["path"][0] in msg
    assert len(read_chexpert_csv(csv, check_images=False)) == len(df)


def test_bad_inputs_give_clear_errors(tree: Path, tmp_path: Path):
    csv = tree / "CheXpert-v1.0-small" / "train.csv"
    with pytest.raises(ValueError, match="unknown target 'Effusion'.*Pleural Effusion"):
        read_chexpert_csv(csv, target="Effusion")
    with pytest.raises(ValueError, match="uncertain_policy"):
        read_chexpert_csv(csv, uncertain_policy="maybe")
    bad = tmp_path / "bad.csv"
    pd.read_csv(csv).drop(columns=["Frontal/Lateral"]).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"bad\.csv: missing columns \['Frontal/Lateral'\]"):
        read_chexpert_csv(bad, check_images=False)
    raw = pd.read_csv(csv)
    raw.loc[0, TARGET] = 2.0
    raw.to_csv(bad, index=False)
    with pytest.raises(ValueError, match="not 1, 0, -1 or blank"):
        read_chexpert_csv(bad, check_images=False)
    raw = pd.read_csv(csv)
    raw.loc[1, "Path"] = "CheXpert-v1.0-small/train/image.jpg"
    raw.to_csv(bad, index=False)
    with pytest.raises(ValueError, match="1 paths are not of the form"):
        read_chexpert_csv(bad, check_images=False)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_chexpert_csv(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------- real CheXpert CSVs


def _pandas_counts(csv: Path | pd.DataFrame, policy: str, frontal_only: bool) -> tuple[int, int]:
    """(rows kept, positives) computed directly with pandas, independently of mocoxr."""
    df = csv if isinstance(csv, pd.DataFrame) else pd.read_csv(csv, usecols=["Frontal/Lateral", TARGET])
    if frontal_only:
        df = df[df["Frontal/Lateral"] == "Frontal"]
    pe = df[TARGET]
    if policy == "ignore":
        pe = pe[pe != -1]
    pos = (pe == 1) | ((pe == -1) & (policy == "ones"))
    return len(pe), int(pos.sum())


@pytest.mark.parametrize("frontal_only", [False, True])
@pytest.mark.parametrize("policy", UNCERTAIN_POLICIES)
def test_real_valid_counts(real_chexpert: Path, policy: str, frontal_only: bool):
    csv = real_chexpert / "valid.csv"
    df = read_chexpert_csv(csv, uncertain_policy=policy, frontal_only=frontal_only, check_images=False)
    assert (len(df), int(df["label"].sum())) == _pandas_counts(csv, policy, frontal_only)
    # known facts of the real valid.csv (no uncertain labels there)
    assert (len(df), int(df["label"].sum())) == ((202, 64) if frontal_only else (234, 67))
    assert df["patient"].str.fullmatch(r"patient\d{5}").all()
    assert df["path"].str.startswith(str(real_chexpert.resolve()) + "/valid/patient").all()


def test_real_train_counts_per_policy(real_chexpert: Path):
    csv = real_chexpert / "train.csv.gz"
    raw = pd.read_csv(csv, usecols=["Frontal/Lateral", TARGET])
    got = {}
    for policy in UNCERTAIN_POLICIES:
        df = read_chexpert_csv(csv, uncertain_policy=policy, frontal_only=True, check_images=False)
        got[policy] = (len(df), int(df["label"].sum()))
        assert got[policy] == _pandas_counts(raw, policy, True)
    # measured on the real file (frontal views)
    assert got == {"ones": (191027, 86477), "zeros": (191027, 76899), "ignore": (181449, 76899)}
    assert got["ones"][1] >= got["zeros"][1] == got["ignore"][1]
    assert got["ignore"][0] <= got["ones"][0]
    all_views = read_chexpert_csv(csv, frontal_only=False, check_images=False)
    assert (len(all_views), int(all_views["label"].sum())) == _pandas_counts(raw, "ones", False)
    assert (len(all_views), int(all_views["label"].sum())) == (223414, 97815)
    assert all_views["patient"].nunique() == 64540
    assert all_views["path"].iloc[0].endswith("/train/patient00001/study1/view1_frontal.jpg")


def test_real_images_absent_gives_one_clear_error(real_chexpert: Path):
    with pytest.raises(FileNotFoundError) as err:
        read_chexpert_csv(real_chexpert / "valid.csv")
    assert "valid.csv: 202 of 202 image files do not exist" in str(err.value)
    assert "check_images" not in str(err.value)  # an option no profile accepts
    assert "completely unpacked" in str(err.value)
