"""Tests of mocoxr.data.nih and prepare_formats.prepare_nih: the official layouts (nested
``images_NNN/images/`` and flat ``images/``), labels, patients, views, the official split, and
the real Data_Entry_2017_v2020 sample in ../shared/data when present."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from mocoxr import phantom
from mocoxr.data.nih import NIH_FINDINGS, nih_target, read_nih
from mocoxr.data.prepare_formats import prepare_nih


@pytest.fixture(scope="module")
def nested(tmp_path_factory) -> Path:
    return phantom.generate_nih_tree(tmp_path_factory.mktemp("nih") / "nih", n_patients=25,
                                     image_size=32, seed=1)


def _csv_rows(folder: Path) -> list[dict]:
    with open(folder / "Data_Entry_2017_v2020.csv") as fh:
        return list(csv.DictReader(fh))


def test_nested_layout_labels_patients_views(nested: Path):
    assert sorted(p.name for p in nested.glob("images_*")) == ["images_001", "images_002"]
    df = read_nih(nested)
    rows = _csv_rows(nested)
    assert len(df) == len(rows)
    assert df["label"].tolist() == [int("Effusion" in r["Finding Labels"].split("|")) for r in rows]
    assert df["patient"].tolist() == [r["Patient ID"].zfill(8) for r in rows]
    assert df["projection"].tolist() == [r["View Position"] for r in rows]
    assert set(df["view"]) == {"frontal"} and df["raw_label"].isin([0.0, 1.0]).all()
    assert all(Path(p).is_file() and Path(p).name == r["Image Index"] for p, r in zip(df["path"], rows))
    assert {"train_val", "test"} == set(df["official_split"])
    # another finding as the target
    cm = read_nih(nested, target="Cardiomegaly")
    assert cm["label"].tolist() == [int("Cardiomegaly" in r["Finding Labels"]) for r in rows]


def test_flat_layout_without_lists_and_missing_images(tmp_path: Path):
    flat = phantom.generate_nih_tree(tmp_path / "flat", n_patients=8, image_size=32, nested=False,
                                     official_lists=False)
    df = read_nih(flat)
    assert (flat / "images").is_dir() and "official_split" not in df.columns
    assert all(Path(p).parent == flat / "images" for p in df["path"])
    victim = Path(df["path"].iloc[0])
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=rf"1 of {len(df)} images .*{victim.name}"):
        read_nih(flat)
    assert len(read_nih(flat, check_images=False)) == len(df)


def test_targets_and_bad_csv(tmp_path: Path):
    assert nih_target("Pleural Effusion") == "Effusion" and nih_target("Hernia") == "Hernia"
    assert len(NIH_FINDINGS) == 14
    with pytest.raises(ValueError, match="14 NIH ChestX-ray14 findings"):
        nih_target("Support Devices")
    with pytest.raises(FileNotFoundError, match="Data_Entry_2017"):
        read_nih(tmp_path)
    (tmp_path / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels\na.png,Effusion\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_nih(tmp_path, check_images=False)
    (tmp_path / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,View Position\na.png,Efusion,0,1,PA\n")
    with pytest.raises(ValueError, match="outside the 14 findings"):
        read_nih(tmp_path, check_images=False)


def test_prepare_uses_the_official_split(nested: Path, tmp_path: Path):
    prep = prepare_nih(nested, tmp_path, fractions=[0.5, 1.0], draws=[2, 1], val_fraction=0.2)
    m = prep.manifest
    test_names = set((nested / "test_list.txt").read_text().split())
    assert set(m.loc[m.split == "test", "path"].map(lambda p: Path(p).name)) == test_names
    by_split = {s: set(g["patient"]) for s, g in m.groupby("split")}
    assert not by_split["train"] & by_split["val"] and not by_split["test"] & by_split["train"]
    assert (tmp_path / "nih.csv").is_file() and len(prep.subset_rows(0.5, 1)) > 0
    again = prepare_nih(nested, tmp_path, fractions=[0.5, 1.0], draws=[2, 1], val_fraction=0.2)
    assert again.manifest.equals(prep.manifest)


def test_prepare_without_lists_splits_by_patient(tmp_path: Path, nested: Path):
    folder = tmp_path / "copy"
    shutil.copytree(nested, folder)
    for n in ("train_val_list.txt", "test_list.txt"):
        (folder / n).unlink()
    m = prepare_nih(folder, tmp_path / "out", fractions=[1.0], draws=[1]).manifest
    groups = m.groupby("patient")["split"].nunique()
    assert set(m["split"]) == {"train", "val", "test"} and (groups == 1).all()


def test_real_data_entry_sample(shared_data: Path, tmp_path: Path):
    """The real header and rows: labels, patients, follow-ups and views as the CSV says."""
    src = shared_data / "nih" / "Data_Entry_2017_v2020_sample.csv"
    shutil.copy(src, tmp_path / "Data_Entry_2017_v2020.csv")
    df = read_nih(tmp_path, target="Pleural Effusion", check_images=False)
    with open(src) as fh:
        rows = list(csv.DictReader(fh))
    assert len(df) == len(rows) == 277
    effusion = np.array(["Effusion" in r["Finding Labels"].split("|") for r in rows])
    assert df["label"].tolist() == effusion.astype(int).tolist()
    assert int(df["label"].sum()) == 150 and effusion[150:].all()  # the rows picked for Effusion
    assert df.loc[0, "patient"] == "00000001" and df.loc[2, "study"] == "00000001/002"
    assert df.loc[2, "label"] == 1 and df.loc[0, "label"] == 0  # Cardiomegaly|Effusion; Cardiomegaly
    assert df["patient"].nunique() == len({r["Patient ID"] for r in rows})
    assert df["projection"].tolist() == [r["View Position"] for r in rows]
    assert set(df["projection"]) == {"PA", "AP"}
    assert df["path"].map(lambda p: Path(p).name).tolist() == [r["Image Index"] for r in rows]
