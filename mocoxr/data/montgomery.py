"""Montgomery County TB set (NLM): read the PNG folder into a manifest (label in the file name).

The set has 138 PNGs (80 normal, 58 TB) named ``MCUCXR_NNNN_L.png`` (L=1 TB) in
``MontgomerySet/CXR_png/``, about 4020x4892 with 12 bits of gray levels; 8- and 16-bit PNGs are
both accepted (the image cache scales 16-bit containers holding 12-bit values by 255/4095).
Other PNG names are skipped with a warning, as for Shenzhen.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mocoxr.data.chexpert import SHOW
from mocoxr.data.shenzhen import _looks_like_png

MONTGOMERY_PATTERN = re.compile(r"^(MCUCXR_\d{4})_([01])\.png$", re.IGNORECASE)


def montgomery_png_dir(folder: str | os.PathLike) -> Path | None:
    """The folder holding ``MCUCXR_*.png``: ``CXR_png/``, ``MontgomerySet/CXR_png/`` or itself."""
    folder = Path(folder)
    for cand in (folder / "CXR_png", folder / "MontgomerySet" / "CXR_png", folder):
        if cand.is_dir() and any(MONTGOMERY_PATTERN.match(p.name) for p in cand.iterdir()):
            return cand.resolve()
    return None


def read_montgomery(folder: str | os.PathLike, check_images: bool = True) -> pd.DataFrame:
    """Read the Montgomery set: columns ``path``, ``patient`` (e.g. ``MCUCXR_0001``), ``label``.

    Rows sorted by file name; with ``check_images`` every file must start with the PNG signature.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"Montgomery folder {folder} does not exist")
    png_dir = montgomery_png_dir(folder)
    if png_dir is None:
        raise FileNotFoundError(f"{folder}: no PNGs named MCUCXR_NNNN_L.png in it, in CXR_png/ "
                                "or in MontgomerySet/CXR_png/")
    pngs = sorted(p for p in png_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    matches = [(p, MONTGOMERY_PATTERN.match(p.name)) for p in pngs]
    skipped = [p.name for p, m in matches if m is None]
    if skipped:
        warnings.warn(f"{png_dir}: skipped {len(skipped)} PNGs not named MCUCXR_NNNN_L.png, "
                      f"e.g. {skipped[:SHOW]}", stacklevel=2)
    rows = [(str(p), m.group(1).upper(), int(m.group(2))) for p, m in matches if m is not None]
    df = pd.DataFrame(rows, columns=["path", "patient", "label"]).astype(
        {"path": str, "patient": str, "label": np.int64})
    dup = df["patient"].duplicated(keep=False)
    if dup.any():
        raise ValueError(f"{png_dir}: image ids appear twice (labels differ?): "
                         f"{sorted(set(df.patient[dup]))[:SHOW]}")
    if check_images:
        bad = [p for p in df["path"] if not _looks_like_png(p)]
        if bad:
            raise ValueError(f"{png_dir}: {len(bad)} files are empty or not PNGs, e.g. {bad[:SHOW]}")
    return df
