"""Tests of mocoxr.phantom.formats and mocoxr.phantom.labelled: the NIH, Montgomery and
labelled-folder trees are deterministic, reused when unchanged, never overwrite a foreign
folder, and match the real formats (NIH header against the real sample when present)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
import pytest

from mocoxr import phantom
from mocoxr.phantom.formats import NIH_HEADER


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.endswith(".json"):
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("make", [
    lambda d, s: phantom.generate_nih_tree(d, n_patients=6, image_size=24, seed=s),
    lambda d, s: phantom.generate_montgomery_tree(d, n_images=6, image_size=24, seed=s),
    lambda d, s: phantom.generate_labels_tree(d, n_patients=4, image_size=24, seed=s,
                                              image_format="dicom"),
])
def test_deterministic_reused_and_safe(tmp_path: Path, make):
    a, b = make(tmp_path / "a", 0), make(tmp_path / "b", 0)
    assert _digest(a) == _digest(b)
    assert _digest(make(tmp_path / "c", 1)) != _digest(a)
    stamp = {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()}
    make(tmp_path / "a", 0)  # same parameters: nothing rewritten
    assert stamp == {p: p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()}
    make(tmp_path / "a", 1)  # other parameters: rebuilt in place
    assert _digest(a) == _digest(tmp_path / "c")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not written by mocoxr.phantom"):
        make(foreign, 0)
    assert (foreign / "mine.txt").read_text() == "keep"


def test_nih_header_is_the_real_one(tmp_path: Path, shared_data_optional):
    tree = phantom.generate_nih_tree(tmp_path, n_patients=4, image_size=24)
    first = (tree / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    assert first[0] == NIH_HEADER and all(len(r.split(",")) == 11 for r in first[1:])
    if shared_data_optional is not None:
        real = (shared_data_optional / "nih" / "Data_Entry_2017_v2020_sample.csv").read_text()
        assert real.splitlines()[0] == NIH_HEADER


def test_dicom_photometric_choices(tmp_path: Path):
    tree = phantom.generate_labels_tree(tmp_path, n_patients=3, image_size=24,
                                        image_format="dicom", photometric="mixed")
    kinds = [pydicom.dcmread(p).PhotometricInterpretation for p in sorted((tree / "images").iterdir())]
    assert set(kinds) == {"MONOCHROME1", "MONOCHROME2"}
    with pytest.raises(ValueError, match="photometric"):
        phantom.generate_labels_tree(tmp_path / "x", image_format="dicom", photometric="RGB")
