"""Tests of mocoxr.own_data (the page "Your own data"): example folders in three formats, the
listing, the command and the manifest preview with relative paths."""

from __future__ import annotations

from pathlib import Path

from mocoxr import own_data


def test_examples_listing_command_and_preview(tmp_path: Path):
    ex = own_data.example_folders(tmp_path, n_patients=12, image_size=24)
    assert {role for role, _ in ex.values()} == {"chexpert", "shenzhen"}
    role, nih = ex["NIH ChestX-ray14"]
    listing = own_data.folder_listing(nih, per_dir=2)
    assert listing.splitlines()[0] == "nih/" and "Data_Entry_2017_v2020.csv" in listing
    assert "images_001/" in listing and "more)" in listing and "phantom" not in listing
    assert own_data.command("shenzhen", "mc") == \
        "python -m mocoxr.book run --profile quick --transfer-dir mc"
    for name, (role, folder) in ex.items():
        fmt, m = own_data.manifest_preview(role, folder, tmp_path / "m" / folder.name,
                                           {"fractions": [1.0], "draws": [1]}, rows=3)
        assert len(m) == 3 and {"path", "patient", "label", "split"} <= set(m.columns)
        assert all(not Path(p).is_absolute() and (folder / p).is_file() for p in m["path"])
        assert fmt == {"NIH ChestX-ray14": "NIH ChestX-ray14", "Montgomery": "Montgomery",
                       "labels CSV (DICOM)": "labels CSV"}[name]
