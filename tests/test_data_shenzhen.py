"""Tests of mocoxr.data.shenzhen: folder layouts, labels from file names, odd files
(synthetic PNGs, and the real Shenzhen PNGs in ../shared/data when present)."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
from data_trees import real_shenzhen, write_shenzhen  # noqa: F401 (fixture)

from mocoxr.data.shenzhen import read_shenzhen


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


def test_real_shenzhen_labels_from_names(real_shenzhen: Path):
    df = read_shenzhen(real_shenzhen)
    assert len(df) == 18 and df["label"].value_counts().to_dict() == {0: 15, 1: 3}
    assert df.loc[df.label == 1, "patient"].tolist() == ["CHNCXR_0352", "CHNCXR_0486", "CHNCXR_0502"]
    names = [Path(p).name for p in df["path"]]
    assert [int(n[-5]) for n in names] == df["label"].tolist()
