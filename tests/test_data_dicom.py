"""Tests of mocoxr.data.dicom through the image cache: MONOCHROME1 inverted, the VOI window
applied, 12/16-bit data scaled to 8 bits, bad files named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from mocoxr.data.cache import decode_image
from mocoxr.data.dicom import is_dicom, read_dicom
from mocoxr.phantom.labelled import write_dicom


@pytest.fixture()
def image() -> np.ndarray:
    y, x = np.mgrid[0:48, 0:40]
    return ((x * 5 + y * 2) % 256).astype(np.uint8)


def test_monochrome1_and_monochrome2_give_the_rendered_image(tmp_path: Path, image):
    write_dicom(tmp_path / "m2.dcm", image, "MONOCHROME2", uid_seed=(1,))
    write_dicom(tmp_path / "m1", image, "MONOCHROME1", uid_seed=(2,))  # no suffix: DICM magic
    ds = pydicom.dcmread(tmp_path / "m1")
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.BitsStored == 12
    assert is_dicom(tmp_path / "m1") and not is_dicom(tmp_path / "x.png")
    m2, m1 = read_dicom(tmp_path / "m2.dcm"), read_dicom(tmp_path / "m1")
    assert m2.dtype == np.uint8 and m2.shape == image.shape
    assert np.abs(m2.astype(int) - image).max() <= 1 and np.abs(m1.astype(int) - image).max() <= 1
    # stored MONOCHROME1 values are the mirror image: without the inversion it would be negative
    assert np.corrcoef(ds.pixel_array.ravel(), image.ravel())[0, 1] < -0.99
    assert decode_image(tmp_path / "m1", 20).shape == (20, 20)


def test_window_and_full_range(tmp_path: Path, image):
    write_dicom(tmp_path / "a.dcm", image, uid_seed=(3,))
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    ds.WindowWidth = float(ds.WindowWidth) / 2  # a narrower window: more contrast, clipped ends
    ds.save_as(tmp_path / "narrow.dcm")
    narrow = read_dicom(tmp_path / "narrow.dcm").astype(int)
    assert (narrow == 0).mean() > 0.15 and (narrow == 255).mean() > 0.15
    del ds.WindowCenter, ds.WindowWidth  # no VOI: the image's own range, 16 bits to 8
    ds.PixelData = (image.astype(np.uint16) * 200 + 1000).tobytes()
    ds.BitsStored, ds.HighBit = 16, 15
    ds.save_as(tmp_path / "full.dcm")
    full = read_dicom(tmp_path / "full.dcm")
    assert full.min() == 0 and full.max() == 255
    x = image.astype(float)
    assert np.abs(full - (x - x.min()) * 255 / np.ptp(x)).max() <= 1


def test_bad_dicom_is_named(tmp_path: Path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a dicom file at all")
    with pytest.raises(ValueError, match="bad.dcm: cannot decode DICOM"):
        decode_image(bad, 16)
