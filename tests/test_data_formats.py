"""Tests of mocoxr.data.formats: which format a folder holds (per role), the one error that
lists what was looked for, and the preparation of each format under its role's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from mocoxr import phantom
from mocoxr.data import formats


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("formats")
    return {
        "chexpert": phantom.generate_chexpert_tree(root / "cx", n_patients=12, n_valid_patients=8,
                                                   image_size=32).parent,
        "nih": phantom.generate_nih_tree(root / "nih", n_patients=20, image_size=32),
        "labels": phantom.generate_labels_tree(root / "lab", n_patients=20, image_size=32),
        "shenzhen": phantom.generate_shenzhen_tree(root / "sz", n_images=20, image_size=32),
        "montgomery": phantom.generate_montgomery_tree(root / "mc", n_images=20, image_size=32),
    }


def test_detection_per_role(trees):
    for role, fmts in formats.ROLES.items():
        for fmt in fmts:
            assert formats.detect_format(trees[fmt], role) == fmt
    assert formats.detect_format(trees["labels"] / "labels.csv", "shenzhen") == "labels"
    assert formats.detect_format(trees["montgomery"] / "CXR_png", "shenzhen") == "montgomery"


def test_unrecognised_folder_lists_what_was_looked_for(trees, tmp_path: Path):
    with pytest.raises(FileNotFoundError) as err:
        formats.detect_format(tmp_path, "chexpert")
    msg = str(err.value)
    assert all(w in msg for w in ("train.csv", "Data_Entry_2017_v2020.csv", "path,label"))
    with pytest.raises(FileNotFoundError, match="CHNCXR_NNNN_L.png.*MCUCXR_NNNN_L.png.*path,label"):
        formats.detect_format(trees["nih"], "shenzhen")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        formats.detect_format(tmp_path / "nope")


@pytest.mark.parametrize("role,fmt", [("chexpert", "nih"), ("chexpert", "labels"),
                                      ("shenzhen", "montgomery"), ("shenzhen", "labels")])
def test_prepare_under_the_role_name(trees, tmp_path: Path, role: str, fmt: str):
    options = ({"target": "Pleural Effusion", "uncertain_policy": "zeros", "val_fraction": 0.2,
                "test_csv": None, "frontal_only": True, "fractions": [0.5, 1.0], "draws": [2, 1]}
               if role == "chexpert" else {"fractions": [0.5, 1.0], "draws": [2, 1]})
    prep = formats.prepare_dataset(role, trees[fmt], tmp_path, options, seed=3)
    assert prep.name == role and (tmp_path / f"{role}.csv").is_file()
    assert set(prep.manifest["split"]) == {"train", "val", "test"}
    assert {"path", "patient", "label", "split"} <= set(prep.manifest.columns)


def test_label_file_head_and_target_labels(trees):
    head = formats.label_file_head(trees["nih"])
    assert list(head.columns[:3]) == ["Image Index", "Finding Labels", "Follow-up #"]
    assert "OriginalImage Height" in head.columns and len(head) == 6
    assert list(formats.label_file_head(trees["labels"]).columns[:2]) == ["path", "label"]
    assert formats.label_file(trees["chexpert"]).name == "train.csv"
    nih = formats.read_target_labels(trees["nih"])
    assert set(nih["raw_label"]) == {0.0, 1.0} and len(nih) > len(head)
    cx = formats.read_target_labels(trees["chexpert"])
    assert (cx["raw_label"] == -1).any()  # CheXpert keeps its uncertain labels
