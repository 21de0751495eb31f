"""Tests of mocoxr.data: CheXpert/Shenzhen readers, splits, label-fraction subsets, prepare_*."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mocoxr import data
from mocoxr.data import (
    CHEXPERT_DRAWS,
    CHEXPERT_FRACTIONS,
    CHEXPERT_OBSERVATIONS,
    SHENZHEN_DRAWS,
    SHENZHEN_FRACTIONS,
    UNCERTAIN_POLICIES,
    find_chexpert_dir,
    make_label_fraction_subsets,
    prepare_chexpert,
    prepare_shenzhen,
    read_chexpert_csv,
    read_shenzhen,
    split_by_patient,
    split_stratified,
    subset_size,
)

TARGET = "Pleural Effusion"
HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS]


# ----------------------------------------------------------------------------- synthetic trees


def write_chexpert(
    root: Path,
    split: str,
    rows: list[tuple[int, int, str, float]],
    name: str = "CheXpert-v1.0-small",
    prefix: str | None = None,
    gz: bool = False,
    images: bool = True,
) -> Path:
    """Write ``root/name/{split}.csv[.gz]`` with rows (patient, study, view, effusion) + JPEGs."""
    cdir = root / name
    prefix = name if prefix is None else prefix
    records, counter = [], {}
    for patient, study, view, effusion in rows:
        k = counter[(patient, study)] = counter.get((patient, study), 0) + 1
        rel = f"{split}/patient{patient:05d}/study{study}/view{k}_{view}.jpg"
        rec = dict.fromkeys(HEADER, np.nan)
        rec.update({"Path": f"{prefix}/{rel}", "Sex": "Female", "Age": 60,
                    "Frontal/Lateral": view.capitalize(), "AP/PA": "AP" if view == "frontal" else "",
                    TARGET: effusion, "Edema": 1.0})
        records.append(rec)
        if images:
            img = cdir / rel
            img.parent.mkdir(parents=True, exist_ok=True)
            value = (patient * 37 + study * 11 + k) % 256
            Image.fromarray(np.full((24, 20), value, np.uint8)).save(img, quality=90)
    cdir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(records, columns=HEADER)
    csv = cdir / (f"{split}.csv.gz" if gz else f"{split}.csv")
    df.to_csv(csv, index=False, compression="gzip" if gz else None)
    return csv


def synthetic_rows(n_patients: int, start: int = 1, seed: int = 0) -> list[tuple[int, int, str, float]]:
    """Several studies per patient, frontal + some lateral views, labels 1/0/-1/blank."""
    rng = np.random.default_rng(seed)
    values = [1.0, 0.0, -1.0, np.nan]
    rows = []
    for p in range(start, start + n_patients):
        for s in range(1, 1 + int(rng.integers(1, 3))):
            lab = values[int(rng.integers(4))]
            rows.append((p, s, "frontal", lab))
            if rng.random() < 0.4:
                rows.append((p, s, "lateral", lab))
    return rows


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small CheXpert-v1.0-small tree with images: 20 train patients, 4 valid patients."""
    write_chexpert(tmp_path, "train", synthetic_rows(20))
    write_chexpert(tmp_path, "valid", [(101, 1, "frontal", 1.0), (102, 1, "frontal", 0.0),
                                       (102, 1, "lateral", 0.0), (103, 1, "frontal", np.nan),
                                       (104, 1, "frontal", -1.0)])
    return tmp_path


# ----------------------------------------------------------------------------- CheXpert reader


def test_constants_match_the_paper():
    assert len(CHEXPERT_OBSERVATIONS) == 14 and TARGET in CHEXPERT_OBSERVATIONS
    assert UNCERTAIN_POLICIES == ("ones", "zeros", "ignore")
    assert (CHEXPERT_FRACTIONS, CHEXPERT_DRAWS) == ((0.001, 0.01, 0.1, 1.0), (5, 5, 5, 1))
    assert (SHENZHEN_FRACTIONS, SHENZHEN_DRAWS) == ((0.0625, 0.25, 1.0), (8, 4, 1))


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


@pytest.fixture(scope="module")
def real_chexpert(shared_data: Path) -> Path:
    cdir = shared_data / "chexpert" / "CheXpert-v1.0-small"
    if not (cdir / "valid.csv").is_file() or not (cdir / "train.csv.gz").is_file():
        pytest.skip(f"real CheXpert CSVs not available in {cdir}")
    return cdir


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


@pytest.fixture(scope="module")
def real_prepared(real_chexpert: Path, tmp_path_factory) -> data.PreparedDataset:
    out = tmp_path_factory.mktemp("manifests")
    # 0.1% and 1% only: the 10%/100% subsets are checked on synthetic labels (and cost seconds)
    return prepare_chexpert(real_chexpert.parent, out, fractions=(0.001, 0.01), draws=(5, 5),
                            check_images=False)


def test_real_prepare_no_leakage_and_fraction_sizes(real_prepared: data.PreparedDataset):
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


# ----------------------------------------------------------------------------- splits and subsets


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


# ----------------------------------------------------------------------------- Shenzhen


def write_shenzhen(folder: Path, labels: list[int], start: int = 1) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, lab in enumerate(labels, start=start):
        p = folder / f"CHNCXR_{i:04d}_{lab}.png"
        Image.fromarray(np.full((20, 16), 40 * lab + i, np.uint8)).save(p)
        out.append(p)
    return out


@pytest.mark.parametrize("layout", ["CXR_png", "ChinaSet_AllFiles/CXR_png", "."])
def test_shenzhen_layouts_and_labels(tmp_path: Path, layout: str):
    write_shenzhen(tmp_path / layout, [0, 1, 1, 0])
    df = read_shenzhen(tmp_path)
    assert df["patient"].tolist() == [f"CHNCXR_{i:04d}" for i in range(1, 5)]
    assert df["label"].tolist() == [0, 1, 1, 0]
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in df["path"])


def test_shenzhen_odd_names_warn_and_bad_files_error(tmp_path: Path):
    folder = tmp_path / "CXR_png"
    write_shenzhen(folder, [0, 1])
    shutil.copy(folder / "CHNCXR_0001_0.png", folder / "CHNCXR_0003_0_mask.png")
    (folder / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match=r"skipped 1 PNGs.*CHNCXR_0003_0_mask\.png"):
        df = read_shenzhen(tmp_path)
    assert len(df) == 2
    (folder / "CHNCXR_0004_1.png").write_bytes(b"not a png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"1 files are empty or not PNGs.*CHNCXR_0004_1"):
            read_shenzhen(tmp_path)
        assert len(read_shenzhen(tmp_path, check_images=False)) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="CXR_png"):
        read_shenzhen(tmp_path / "empty")


@pytest.fixture(scope="module")
def real_shenzhen(shared_data: Path) -> Path:
    folder = shared_data / "shenzhen"
    if not (folder / "CXR_png").is_dir():
        pytest.skip(f"real Shenzhen PNGs not available in {folder}")
    return folder


def test_real_shenzhen_labels_from_names(real_shenzhen: Path):
    df = read_shenzhen(real_shenzhen)
    assert len(df) == 18 and df["label"].value_counts().to_dict() == {0: 15, 1: 3}
    assert df.loc[df.label == 1, "patient"].tolist() == ["CHNCXR_0352", "CHNCXR_0486", "CHNCXR_0502"]
    names = [Path(p).name for p in df["path"]]
    assert [int(n[-5]) for n in names] == df["label"].tolist()


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


# ----------------------------------------------------------------------------- prepare_* reuse


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
