"""Shenzhen TB set: read the PNG folder into a manifest (the label is in each file name).

PNG files whose names do not match ``CHNCXR_NNNN_L.png`` are skipped with a warning (the
official archive ships no such files, but copies often carry masks or extras).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mocoxr.data.chexpert import SHOW

SHENZHEN_PATTERN = re.compile(r"^(CHNCXR_\d{4})_([01])\.png$", re.IGNORECASE)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _shenzhen_png_dir(folder: Path) -> Path:
    for cand in (folder / "CXR_png", folder / "ChinaSet_AllFiles" / "CXR_png", folder):
        if cand.is_dir() and any(p.suffix.lower() == ".png" for p in cand.iterdir()):
            return cand.resolve()
    raise FileNotFoundError(
        f"{folder}: expected PNGs in it, in CXR_png/ or in ChinaSet_AllFiles/CXR_png/"
    )


def _looks_like_png(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == _PNG_SIGNATURE


def _named_rows(png_dir: Path) -> list[tuple[str, str, int]]:
    """(path, image id, label) of every well-named PNG, by file name; warns about the rest."""
    pngs = sorted(p for p in png_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    matches = [(p, SHENZHEN_PATTERN.match(p.name)) for p in pngs]
    skipped = [p.name for p, m in matches if m is None]
    if skipped:
        warnings.warn(
            f"{png_dir}: skipped {len(skipped)} PNGs not named CHNCXR_NNNN_L.png, e.g. "
            f"{skipped[:SHOW]}",
            stacklevel=3,
        )
    rows = [(str(p), m.group(1).upper(), int(m.group(2))) for p, m in matches if m is not None]
    if not rows:
        raise FileNotFoundError(f"{png_dir}: no PNGs named CHNCXR_NNNN_L.png")
    return rows


def read_shenzhen(folder: str | os.PathLike, check_images: bool = True) -> pd.DataFrame:
    """Read the Shenzhen TB set: columns ``path``, ``patient`` (e.g. ``CHNCXR_0001``), ``label``.

    ``folder`` holds ``CXR_png/`` (or ``ChinaSet_AllFiles/CXR_png/``) or the PNGs directly.
    ``CHNCXR_NNNN_L.png`` gives the label (L=1 TB). Other PNG names are skipped with a warning.
    With ``check_images`` each file must be non-empty and start with the PNG signature.
    Rows are sorted by file name.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"Shenzhen folder {folder} does not exist")
    png_dir = _shenzhen_png_dir(folder)
    df = pd.DataFrame(_named_rows(png_dir), columns=["path", "patient", "label"]).astype(
        {"path": str, "patient": str, "label": np.int64}
    )
    dup = df["patient"].duplicated(keep=False)
    if dup.any():
        twice = sorted(set(df.patient[dup]))[:SHOW]
        raise ValueError(f"{png_dir}: image ids appear twice (labels differ?): {twice}")
    if check_images:
        bad = [p for p in df["path"] if not _looks_like_png(p)]
        if bad:
            raise ValueError(
                f"{png_dir}: {len(bad)} files are empty or not PNGs, e.g. {bad[:SHOW]}"
            )
    return df
