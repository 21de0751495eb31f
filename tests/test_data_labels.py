"""Tests of mocoxr.data.labels and prepare_labels: a labels CSV over PNG, JPEG and DICOM
images, optional patient/study/view columns, the per-image warning, clear errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mocoxr import phantom
from mocoxr.data.cache import decode_image
from mocoxr.data.labels import NO_PATIENT_WARNING, find_labels_csv, read_labels
from mocoxr.data.prepare_formats import prepare_labels


@pytest.mark.parametrize("fmt", ["png", "jpeg", "dicom"])
def test_each_image_format_reads_and_decodes(tmp_path: Path, fmt: str):
    tree = phantom.generate_labels_tree(tmp_path, n_patients=6, image_size=32, image_format=fmt)
    df = read_labels(tree)
    csv = pd.read_csv(tree / "labels.csv")
    assert df["label"].tolist() == csv["label"].tolist() and len(df) == len(csv)
    assert df["patient"].tolist() == csv["patient"].tolist()
    assert df["study"].tolist() == (csv["patient"] + "/" + csv["study"]).tolist()
    assert set(df["view"]) <= {"frontal", "lateral"} and "frontal" in set(df["view"])
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    images = np.stack([decode_image(p, 16) for p in df["path"]])
    assert images.std() > 10  # real pictures, not blank


def test_same_picture_in_every_format(tmp_path: Path):
    """The DICOM route (window, MONOCHROME1 inverted) gives the PNG's pixels; JPEG close."""
    dec = {}
    for fmt in ("png", "jpeg", "dicom"):
        tree = phantom.generate_labels_tree(tmp_path / fmt, n_patients=2, image_size=32,
                                            image_format=fmt, photometric="MONOCHROME1")
        dec[fmt] = np.stack([decode_image(p, 32) for p in read_labels(tree)["path"]]).astype(int)
    assert np.abs(dec["dicom"] - dec["png"]).max() <= 1
    assert np.abs(dec["jpeg"] - dec["png"]).mean() < 3


def test_without_patient_column_warns_and_splits_per_image(tmp_path: Path):
    tree = phantom.generate_labels_tree(tmp_path, n_patients=12, image_size=32, with_patient=False)
    with pytest.warns(UserWarning, match="split is per image"):
        df = read_labels(tree / "labels.csv")
    assert df["patient"].is_unique and "view" not in df.columns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = prepare_labels(tree, tmp_path / "out", fractions=[1.0], draws=[1]).manifest
    assert set(m["split"]) == {"train", "val", "test"}
    assert "leakage" in NO_PATIENT_WARNING


def test_prepare_splits_by_patient_and_drops_laterals(tmp_path: Path):
    tree = phantom.generate_labels_tree(tmp_path, n_patients=30, image_size=32)
    prep = prepare_labels(tree, tmp_path / "out", split_fractions=(0.6, 0.2, 0.2),
                          fractions=[0.5, 1.0], draws=[2, 1])
    m = prep.manifest
    assert (m.groupby("patient")["split"].nunique() == 1).all()
    assert set(m["view"]) == {"frontal"} and (m["raw_label"] == m["label"]).all()
    assert len(m) == (read_labels(tree)["view"] == "frontal").sum()
    both = prepare_labels(tree, tmp_path / "out2", frontal_only=False, fractions=[1.0], draws=[1])
    assert "lateral" in set(both.manifest["view"])


@pytest.mark.filterwarnings("ignore:.*no 'patient' column")
def test_errors_name_the_csv(tmp_path: Path):
    assert find_labels_csv(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no labels CSV"):
        read_labels(tmp_path)
    (tmp_path / "a.png").write_bytes(b"x")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\na.png,2\n")
    with pytest.raises(ValueError, match="labels.csv: 1 values of 'label' are not 0 or 1"):
        read_labels(tmp_path)
    csv.write_text("path,label,view\na.png,1,oblique\n")
    with pytest.raises(ValueError, match="neither frontal"):
        read_labels(tmp_path)
    csv.write_text("path,label,patient\na.png,1,p1\nmissing.png,0,p2\n")
    with pytest.raises(FileNotFoundError, match="1 of 2 image files do not exist"):
        read_labels(tmp_path)
    assert len(read_labels(tmp_path, check_images=False)) == 2
