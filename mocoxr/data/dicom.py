"""DICOM radiographs to 8-bit gray, through pydicom (and its pixel-data handlers).

The steps, in the order the DICOM standard applies them: the modality LUT (rescale slope and
intercept), then the VOI transform (the first ``VOILUTSequence`` entry, else the first
``WindowCenter``/``WindowWidth`` with the standard's linear function), else the image's own
range (min to max); the result is scaled to [0, 1] and to 8 bits, so 12- and 16-bit data keep
their contrast. ``MONOCHROME1`` (low values bright) is inverted so that bone is bright, as in
``MONOCHROME2`` and every other format the package reads. Multi-frame files give their first
frame; colour (RGB) files their channel mean.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_OTHER_IMAGES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def is_dicom(path: str | os.PathLike) -> bool:
    """A ``.dcm``/``.dicom``/``.dic`` name, or the ``DICM`` magic at byte 128 (names without a
    known image suffix: DICOM files often have none)."""
    suffix = Path(path).suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in _OTHER_IMAGES:
        return False
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _first(value) -> float:
    """A DICOM value that may be multi-valued (several windows): its first entry."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _voi_to_unit(ds, values: np.ndarray) -> np.ndarray:
    """The VOI transform of modality values, as floats in [0, 1]."""
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2])
        out = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64)
        return np.clip(out / float(2 ** bits - 1), 0.0, 1.0)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        c, w = _first(ds.WindowCenter), max(_first(ds.WindowWidth), 1.0)
        return np.clip((values - (c - 0.5)) / max(w - 1.0, 1.0) + 0.5, 0.0, 1.0)
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """One DICOM image as gray uint8 (H, W): modality LUT, VOI, MONOCHROME1 inverted (above).

    Raises ValueError naming the file when pydicom cannot read it or it holds no image.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(os.fspath(path))
        raw = ds.pixel_array
    except (InvalidDicomError, AttributeError, KeyError, ValueError, RuntimeError, OSError,
            NotImplementedError) as exc:
        raise ValueError(f"{path}: cannot decode DICOM ({type(exc).__name__}: {exc})") from exc
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raw = raw[0]
    values = apply_modality_lut(raw, ds).astype(np.float64)
    if samples > 1:
        values = values.mean(axis=-1)
    if values.ndim != 2 or min(values.shape) < 1:
        raise ValueError(f"{path}: expected a 2-D image in the DICOM, got shape {values.shape}")
    unit = _voi_to_unit(ds, values)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        unit = 1.0 - unit
    return np.rint(unit * 255.0).astype(np.uint8)
